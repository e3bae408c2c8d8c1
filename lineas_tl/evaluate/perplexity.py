r"""Perplexity of a (steered) language model on reference text: the fluency cost of steering."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lineas_tl.gate.gate import gate_inputs
from lineas_tl.methods.base import frozen
from lineas_tl.runner import TokenSequences, get_runner

if TYPE_CHECKING:
    from lineas_tl.protocols import SteererLike as HookedSteerer
    from lineas_tl.protocols import Strength

REFERENCE_TEXTS: tuple[str, ...] = (
    "The river flows through the valley and reaches the sea after about two hundred kilometres.",
    "In the morning the market opens early, and farmers bring vegetables, bread and cheese.",
    "The library was built in the nineteenth century and holds more than a million books.",
    "Water boils at one hundred degrees Celsius at sea level, and at lower temperatures on mountains.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Many birds migrate south in autumn, flying thousands of kilometres to warmer regions.",
    "The train leaves the station at half past eight and arrives in the city before noon.",
    "She studied mathematics at the university and later worked as an engineer.",
    "The museum displays paintings, sculptures and old maps of the region.",
    "Rain is expected in the north, while the south will stay dry and mild.",
    "The bridge was opened in 1932 and carries both cars and pedestrians across the bay.",
    "Tomatoes grow best in warm weather with plenty of sunlight and regular watering.",
    "The company reported higher sales in the second quarter of the year.",
    "He walked along the beach, collecting shells and watching the waves.",
    "The town hall stands in the main square, next to an old stone church.",
    "Children in the village learn to read and write at the local school.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Scientists measured the temperature of the lake every day for a whole year.",
    "The new road will connect the two towns and shorten the journey by an hour.",
    "The orchestra played a symphony by Beethoven, followed by a short piece by Mozart.",
    "Most of the island is covered by forest, and its highest peak rises above the clouds.",
    "The shop sells fresh fruit, newspapers and a few household goods.",
    "During the summer the park hosts concerts and an open air cinema.",
    "The old lighthouse still guides ships safely into the harbour at night.",
)
"""Neutral plain sentences (written for this library) used for perplexity when none are given.

Small and generic; for real measurements pass held-out text, e.g.
``lineas_tl.concepts.reference_text(n=64)`` (Wikipedia paragraphs disjoint from every prompt set).
"""


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Inference mode for evaluation: parameters frozen, no gradients."""
    with frozen(model), torch.no_grad():
        yield


def perplexity(
    model: Any,
    texts: Sequence[str] | Any,
    batch_size: int = 8,
    steerer: HookedSteerer | None = None,
    strength: Strength = 1.0,
    *,
    max_length: int | None = None,
    progress: bool = False,
) -> float:
    r"""Perplexity of ``model`` (steered by ``steerer`` at ``strength``, if given) on ``texts``.

    .. math::

        \text{PPL} = \exp\Big(\frac{1}{N}\sum_{\text{texts}}\sum_{t \ge 1} -\log p(x_{t+1} \mid x_{\le t})\Big)

    the mean next-token negative log-likelihood over all :math:`N` predicted tokens of the corpus
    (a corpus-level, token-weighted perplexity). Texts are tokenised as the model does (BOS
    included when the model prepends one), right-padded into batches and run with their attention
    mask; padded positions are excluded from the mean, so batching does not change the result.
    The loss is computed from the logits here rather than by the model's own ``return_type="loss"``
    so the padding mask is applied the same way on every model.

    Args:
        model: a language model with hook points (``TransformerBridge``).
        texts: strings (needs the model's tokenizer) or token ids.
        batch_size: texts per forward pass.
        steerer: a fitted :class:`~lineas_tl.HookedSteerer` on ``model``, or None for the model alone.
        strength: the steering strength (a float, or ``{site: float}``).
        max_length: truncate each text to this many tokens (default: the model's ``cfg.n_ctx``).
        progress: show a progress bar over batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    runner = get_runner(model)
    prepared = runner.prepare(texts)
    limit = max_length if max_length is not None else getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(prepared, TokenSequences) and isinstance(limit, int) and limit > 0:
        prepared.sequences = [s[:limit] for s in prepared.sequences]
    gated = getattr(steerer, "gate_", None) is not None
    hooks = steerer.fwd_hooks(strength) if steerer is not None and not gated else []
    total, count = 0.0, 0
    starts = range(0, len(prepared), batch_size)
    with evaluating(model):
        for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
            batch = prepared.batch(range(start, min(start + batch_size, len(prepared))), padding_side="right")
            if gated:  # a gate counts each row's real tokens only; a shared one reads each row first
                hooks = steerer.fwd_hooks(strength, **gate_inputs(steerer, batch))  # type: ignore[union-attr]
            logits = runner.forward(batch, hooks)
            tokens, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]
            assert mask is not None  # a language model's batch always has one
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            valid = (mask[:, 1:] * mask[:, :-1]).bool()
            total += float(nll[valid].double().sum())
            count += int(valid.sum())
    if count == 0:
        raise ValueError("no text has two or more tokens: there is no next token to predict")
    return math.exp(total / count)


__all__ = ["REFERENCE_TEXTS", "evaluating", "perplexity"]
