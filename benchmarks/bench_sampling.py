"""The evaluation's sampling with TransformerLens' sampler and with the unsorted nucleus, on SmolLM2.

The demo's protocol for one sweep row: the toxicity concept's first 12 held-out prompts, 2 samples
each in one batch of 24, T = 1, top_p 0.3, repetition penalty 1.2, 32 tokens, seed 0, steered by CAA
(fitted on the demo's 32 + 32 prompts) at several strengths. For each strength: both samplers' wall
time and whether the continuations are identical. Results: ``benchmarks/RESULTS_sampling.md``.

Usage::

    python benchmarks/bench_sampling.py
"""

from __future__ import annotations

import contextlib
import time

from lineas_tl import HookedSteerer, models
from lineas_tl.concepts import get_concept
from lineas_tl.evaluate import PAPER, continuations
from lineas_tl.evaluate import sampling


def main() -> None:
    concept = get_concept("toxicity")
    source, target = concept.split(n_fit=32, seed=0)
    model = models.load("smollm2-135m")
    steerer = HookedSteerer(model).fit(source, target, method="caa", progress=False)
    config, prompts = PAPER.with_(n_samples=2), concept.eval_prompts[:12]
    print("strength | TransformerLens' sampler | unsorted nucleus | same continuations")
    print("--- | --- | --- | ---")
    for strength in (0.0, 0.3, 0.7, 1.0):
        texts, seconds = [], []
        for sampler in (_transformer_lens_sampler, contextlib.nullcontext):
            with sampler():
                start = time.perf_counter()
                texts.append(continuations(model, prompts, steerer, strength, config=config, batch_size=24))
                seconds.append(time.perf_counter() - start)
        print(f"{strength:g} | {seconds[0]:.2f} s | {seconds[1]:.2f} s | {'yes' if texts[0] == texts[1] else 'NO'}")


@contextlib.contextmanager
def _transformer_lens_sampler():  # type: ignore[no-untyped-def]
    """Inside: continuations() leaves TransformerLens' sampler in place."""
    swap = sampling.faster_top_p
    sampling.faster_top_p = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        sampling.faster_top_p = swap


if __name__ == "__main__":
    main()
