"""The :class:`Concept` record shared by every concept module, and small helpers."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

Scorer = Callable[[Sequence[str]], list[float]]
Conversation = list[dict[str, str]]

CONTINUE_INSTRUCTION = "Continue this text: "
"""The default user instruction of a concept's chat form: the prompt follows it in the user turn."""


def chat_prompts(prompts: Iterable[str], instruction: str = CONTINUE_INSTRUCTION) -> list[Conversation]:
    """Chat form of text prompts: one user turn each, ``instruction + prompt``.

    A concept's prompts are prefixes to continue; in a conversation the model answers instead, so
    the instruction asks it to continue the text, and the assistant's reply is what gets judged.
    Pass ``instruction=""`` to send the bare prompt as the user's message.
    """
    return [[{"role": "user", "content": f"{instruction}{p}"}] for p in prompts]


class FitSplit(NamedTuple):
    """Prompt sets used to fit a steerer: ``source`` has the concept, ``target`` does not."""

    source: list[str]
    target: list[str]


@dataclass
class Concept:
    """An offline concept: prompt sets, held-out evaluation prompts and a judge.

    Steering maps ``source`` (the side to move away from) onto ``target``. ``scorer`` maps texts
    to scores in [0, 1], higher meaning more of the judged property (``score_name``); ``goal``
    says whether successful source-to-target steering should ``"decrease"`` or ``"increase"``
    that score on continuations of ``eval_prompts``.
    """

    name: str
    source_prompts: list[str]
    target_prompts: list[str]
    eval_prompts: list[str]
    scorer: Scorer = field(repr=False)
    score_name: str
    goal: Literal["decrease", "increase"]
    description: str = ""
    control_pool: list[str] = field(default_factory=list, repr=False)
    """Neutral prompts steering should leave alone (see :mod:`lineas_tl.concepts.control`)."""
    paired: bool = False
    """Whether ``source_prompts[i]`` and ``target_prompts[i]`` differ only in the concept (the same
    sentence frame and subject slot), so that :meth:`split` can draw matched pairs."""

    def control_prompts(self, n: int = 32, seed: int = 0) -> list[str]:
        """Draw ``n`` control prompts (deterministic for a seed) for ``fit(..., control=..., gate=True)``.

        They are disjoint from the fit pools, from ``eval_prompts`` and from the perplexity
        reference text (:func:`~lineas_tl.concepts.text.reference_text`).
        """
        if n > len(self.control_pool):
            raise ValueError(f"n={n} exceeds the {len(self.control_pool)} control prompts of {self.name!r}")
        return random.Random(seed).sample(self.control_pool, n)

    def split(self, n_fit: int = 32, seed: int = 0, paired: bool = False) -> FitSplit:
        """Draw ``n_fit`` source and ``n_fit`` target prompts (deterministic for a seed).

        Fit prompts come from the source/target pools, which never overlap ``eval_prompts``. By
        default the two sides are drawn independently. ``paired=True`` (concepts with
        :attr:`paired` pools) draws the same pool indices on both sides, so the sets differ only in
        the concept: an independent draw's topic and frame imbalance between the sides also enters
        a mean difference (``results/gate/README.md``, "Paired fit draws").
        """
        if n_fit > min(len(self.source_prompts), len(self.target_prompts)):
            raise ValueError(f"n_fit={n_fit} exceeds the prompt pools of {self.name!r}")
        rng = random.Random(seed)
        if paired:
            if not self.paired or len(self.source_prompts) != len(self.target_prompts):
                raise ValueError(
                    f"the pools of {self.name!r} are not paired prompt by prompt; draw them with "
                    "split(..., paired=False) or build a Concept with paired=True and index-matched pools"
                )
            idx = rng.sample(range(len(self.source_prompts)), n_fit)
            return FitSplit([self.source_prompts[i] for i in idx], [self.target_prompts[i] for i in idx])
        source = rng.sample(self.source_prompts, n_fit)
        return FitSplit(source, rng.sample(self.target_prompts, n_fit))

    def chat_split(
        self, n_fit: int = 32, seed: int = 0, instruction: str = CONTINUE_INSTRUCTION, paired: bool = False
    ) -> tuple[list[Conversation], list[Conversation]]:
        """:meth:`split`'s prompts in chat form (see :func:`chat_prompts`): ``(source, target)``."""
        source, target = self.split(n_fit, seed, paired)
        return chat_prompts(source, instruction), chat_prompts(target, instruction)

    def chat_eval_prompts(self, instruction: str = CONTINUE_INSTRUCTION) -> list[Conversation]:
        """The held-out evaluation prompts in chat form (see :func:`chat_prompts`)."""
        return chat_prompts(self.eval_prompts, instruction)

    def score(self, texts: Sequence[str]) -> list[float]:
        """Score texts with the concept's judge (same as ``scorer(texts)``)."""
        return self.scorer(texts)

    def lower_is_better(self) -> Scorer:
        """The judge turned so that steering from source to target lowers it, as ``compare`` and the
        frontier rank: ``scorer`` when ``goal="decrease"``, ``1 - scorer`` when ``"increase"``."""
        if self.goal == "decrease":
            return self.scorer
        return lambda texts: [1 - s for s in self.scorer(texts)]


def cache_root() -> Path:
    """Root of lineas-tl's on-disk cache: ``$LINEAS_TL_CACHE`` or ``~/.cache/lineas-tl``."""
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lineas-tl"


def atomic_joblib_dump(obj: Any, path: Path) -> None:
    """Write ``obj`` with joblib to ``path`` via a temp file and ``os.replace``."""
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        joblib.dump(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fill(templates: Iterable[str], subjects: Iterable[str]) -> list[str]:
    """Expand templates over subjects: ``{s}`` is a subject, ``{s_l}`` it lowercase-initial."""
    subjects = list(subjects)
    return [t.format(s=s, s_l=s[:1].lower() + s[1:]) for t in templates for s in subjects]


def shuffled(items: Iterable[str], seed: int = 0) -> list[str]:
    """Deduplicated (order-preserving) then deterministically shuffled copy of ``items``."""
    out = list(dict.fromkeys(items))
    random.Random(seed).shuffle(out)
    return out
