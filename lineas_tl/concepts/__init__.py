"""Offline concept data sets and judges for evaluating steering.

Example:
    >>> from lineas_tl.concepts import get_concept
    >>> c = get_concept("toxicity")
    >>> source, target = c.split(n_fit=32, seed=0)   # fit sets, disjoint from c.eval_prompts
    >>> chat_source, chat_target = c.chat_split(n_fit=32, seed=0)   # the same, as user turns
    >>> scores = c.scorer(["have a nice day", "shut up, moron"])  # higher = more of the concept
    >>> ranked = c.lower_is_better()   # the judge as compare ranks it (1 - scorer for style)

| concept | source -> target | score | goal |
|---|---|---|---|
| toxicity | toxic-inviting -> neutral prompts | alt-profanity-check probability | decrease |
| sentiment | negative -> positive | VADER negativity ``(1 - compound) / 2`` | decrease |
| style | modern prose -> Shakespeare | P(Shakespeare) of a TF-IDF classifier | increase |

Nothing here touches the network: all text and judges ship inside installed packages.
"""

from __future__ import annotations

from collections.abc import Callable

from lineas_tl.concepts import sentiment, style, toxicity
from lineas_tl.concepts.base import CONTINUE_INSTRUCTION, Concept, FitSplit, Scorer, chat_prompts
from lineas_tl.concepts.sentiment import negativity_scores
from lineas_tl.concepts.style import shakespeare_scores, style_classifier_accuracy
from lineas_tl.concepts.text import reference_text
from lineas_tl.concepts.toxicity import toxicity_scores

_CONCEPTS: dict[str, Callable[[], Concept]] = {
    "toxicity": toxicity.concept,
    "sentiment": sentiment.concept,
    "style": style.concept,
}


def available_concepts() -> list[str]:
    """Names accepted by :func:`get_concept`."""
    return list(_CONCEPTS)


def get_concept(name: str) -> Concept:
    """Build a concept by name (``"toxicity"``, ``"sentiment"`` or ``"style"``)."""
    build = _CONCEPTS.get(name.lower())
    if build is None:
        raise ValueError(f"unknown concept {name!r}; choose from {available_concepts()}")
    return build()


__all__ = [
    "CONTINUE_INSTRUCTION",
    "Concept",
    "FitSplit",
    "Scorer",
    "available_concepts",
    "chat_prompts",
    "get_concept",
    "negativity_scores",
    "reference_text",
    "shakespeare_scores",
    "style_classifier_accuracy",
    "toxicity_scores",
]
