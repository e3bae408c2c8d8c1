"""Linear-AcT's perplexity against strength on SmolLM2, with and without AcT's support range.

Toxicity, the demo's 32 + 32 fit prompts (``split(32, seed=0)``); perplexity on 32 held-out Wikipedia
paragraphs (``reference_text(n=32, seed=0, max_words=64)``); strengths 0, 0.1, ..., 1.
Results: ``benchmarks/RESULTS_linear_act.md``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/linear_act_support.py out.json
"""

import json
import sys

from lineas_tl import HookedSteerer, models
from lineas_tl.concepts import get_concept, reference_text
from lineas_tl.evaluate import perplexity


def main(path: str) -> None:
    model = models.load("smollm2-135m")
    source, target = get_concept("toxicity").split(n_fit=32, seed=0)
    texts = reference_text(n=32, seed=0, max_words=64)
    out = {}
    for support in ("q_0_100", None):
        steerer = HookedSteerer(model).fit(source, target, method="linear_act", support=support, progress=False)
        out[str(support)] = [(k / 10, perplexity(model, texts, steerer=steerer, strength=k / 10)) for k in range(11)]
        print(support, out[str(support)], flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
