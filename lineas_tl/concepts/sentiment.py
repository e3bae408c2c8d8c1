"""Sentiment: negative review openings (source) vs. positive ones (target).

Fit prompts pair the same frames with negative or positive wording; held-out evaluation
prompts are negative openings with other topics and other frames. The judge is VADER's
compound score mapped to a negativity in [0, 1], ``(1 - compound) / 2`` (0.5 is neutral).
Steering negative to positive should **decrease** it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from lineas_tl.concepts.base import Concept, fill, shuffled

_FIT_TOPICS = [
    "The movie",
    "The restaurant",
    "My new phone",
    "The hotel",
    "This book",
    "The concert",
    "The customer service",
    "The flight",
]
_NEGATIVE_FRAMES = [
    "{s} was a terrible",
    "I hated {s_l} because it was",
    "{s} was boring, and the",
    "Honestly, {s_l} was the worst",
    "{s} left me disappointed and",
    "I regret paying for {s_l}, it was",
    "{s} was awful from start to",
    "Nothing about {s_l} was",
]
_POSITIVE_FRAMES = [
    "{s} was a wonderful",
    "I loved {s_l} because it was",
    "{s} was exciting, and the",
    "Honestly, {s_l} was the best",
    "{s} left me delighted and",
    "I am glad I paid for {s_l}, it was",
    "{s} was great from start to",
    "Everything about {s_l} was",
]
_EVAL_TOPICS = [
    "The food",
    "The new album",
    "My vacation",
    "The game last night",
    "The museum",
    "This laptop",
    "The wedding",
    "The class",
]
_EVAL_FRAMES = [
    "{s} was a complete waste of",
    "I was so annoyed by {s_l} that",
    "{s} made me feel miserable because",
    "Sadly, {s_l} was a disaster and",
    "{s} was ugly, slow and",
    "I will never forgive {s_l} for",
    "The worst part of {s_l} was",
    "{s} ruined my whole",
    "I felt sick after {s_l} and",
    "{s} was so bad that",
]


def negativity_scores(texts: Sequence[str]) -> list[float]:
    """VADER negativity ``(1 - compound) / 2`` in [0, 1]: 1 very negative, 0 very positive."""
    analyzer = _analyzer()
    return [(1.0 - analyzer.polarity_scores(t)["compound"]) / 2.0 for t in texts]


@cache
def _analyzer():  # type: ignore[no-untyped-def]
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def fit_pools(
    negative_frames: Sequence[str] = _NEGATIVE_FRAMES, positive_frames: Sequence[str] = _POSITIVE_FRAMES
) -> tuple[list[str], list[str]]:
    """Source and target fit pools over the fit topics, paired prompt by prompt: ``source[i]`` and
    ``target[i]`` fill the same frame slot (``negative_frames[k]`` / ``positive_frames[k]``) with the
    same topic. Both sides are shuffled by the same permutation."""
    if len(negative_frames) != len(positive_frames):
        raise ValueError(
            f"{len(negative_frames)} negative and {len(positive_frames)} positive frames: give one of each per pair"
        )
    return shuffled(fill(negative_frames, _FIT_TOPICS), seed=0), shuffled(fill(positive_frames, _FIT_TOPICS), seed=0)


@cache
def _prompts() -> tuple[list[str], list[str], list[str]]:
    source, target = fit_pools()
    evals = shuffled(fill(_EVAL_FRAMES, _EVAL_TOPICS), seed=0)
    return source, target, evals


def concept() -> Concept:
    """The sentiment concept: 64 negative, 64 positive and 80 held-out negative prompts."""
    source, target, evals = _prompts()
    return Concept(
        name="sentiment",
        source_prompts=list(source),
        target_prompts=list(target),
        eval_prompts=list(evals),
        scorer=negativity_scores,
        score_name="negativity (VADER, (1 - compound) / 2)",
        goal="decrease",
        paired=True,
        description=__doc__ or "",
        control_pool=_control_pool(),
    )


def _control_pool() -> list[str]:
    from lineas_tl.concepts.control import news_control_pool
    from lineas_tl.concepts.style import prompt_sentences

    return list(news_control_pool(prompt_sentences()))
