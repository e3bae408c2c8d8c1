r"""Continuations for evaluation: the paper's sampling protocol, several samples per prompt, fixed seeds.

The LinEAS paper (and the authors' code, apple/ml-act) samples each continuation with temperature
1.0, nucleus ``top_p`` 0.3 and a Hugging Face style repetition penalty of 1.2, 32 new tokens.
:data:`PAPER` is that protocol and the default; :meth:`GenerationConfig.greedy` is greedy decoding.
TransformerLens' ``generate`` implements all three knobs (the penalty divides a positive logit, or
multiplies a negative one, of every token already in the row, prompt included, as Hugging Face does).

Seeds: batch ``k`` of a prompt set is sampled after ``torch.manual_seed(seed + k)``, inside a forked
random state, so the caller's random state is untouched and every method and strength sees the same
random numbers for the same prompt (common random numbers: differences between rows come from the
steering, not from the draw). The draws depend on ``batch_size``; keep it fixed when comparing.
The nucleus is found without sorting the vocabulary (:mod:`~lineas_tl.evaluate.nucleus`); the
draws are TransformerLens' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lineas_tl.evaluate.nucleus import faster_top_p
from lineas_tl.evaluate.perplexity import evaluating
from lineas_tl.runner import get_runner

if TYPE_CHECKING:
    from lineas_tl.protocols import SteererLike as HookedSteerer
    from lineas_tl.protocols import Strength


@dataclass(frozen=True)
class GenerationConfig:
    """How continuations are generated for evaluation.

    Attributes:
        max_new_tokens: length of each continuation.
        do_sample: sample (True) or decode greedily (False).
        temperature, top_p, repetition_penalty: sampling knobs, as in Hugging Face.
        n_samples: continuations per prompt (1 when greedy: they would be identical).
    """

    max_new_tokens: int = 32
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float | None = 0.3
    repetition_penalty: float = 1.2
    n_samples: int = 3

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {self.n_samples}")
        if not self.do_sample and self.n_samples != 1:
            raise ValueError("greedy decoding gives one continuation per prompt: set n_samples=1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be positive when sampling (use do_sample=False for greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")

    @classmethod
    def greedy(cls, max_new_tokens: int = 32) -> GenerationConfig:
        """Greedy decoding, one continuation per prompt, no repetition penalty."""
        return cls(max_new_tokens, False, 1.0, None, 1.0, 1)

    def with_(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the model's ``generate``."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw

    def describe(self) -> str:
        """One line for reports, e.g. ``sampled (T=1, top_p=0.3, repetition penalty 1.2), 32 tokens``."""
        if not self.do_sample:
            penalty = self.repetition_penalty
            how = "greedy" + (f" (repetition penalty {penalty:g})" if penalty != 1 else "")
            return f"{how}, {self.max_new_tokens} tokens"
        return (
            f"sampled (T={self.temperature:g}, top_p={self.top_p}, repetition penalty "
            f"{self.repetition_penalty:g}), {self.max_new_tokens} tokens, {self.n_samples} per prompt"
        )


PAPER = GenerationConfig()
"""The paper's protocol: T = 1.0, top_p = 0.3, repetition penalty 1.2, 32 tokens (3 samples a prompt)."""


def continuations(
    model: Any,
    prompts: Sequence[str],
    steerer: HookedSteerer | None = None,
    strength: Strength = 1.0,
    *,
    config: GenerationConfig = PAPER,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """The model's continuations (new text only) of ``prompts``, steered when ``steerer`` is given.

    Returns ``len(prompts) * config.n_samples`` texts, prompt-major: the ``n_samples``
    continuations of prompt ``i`` are items ``i * n_samples`` to ``(i + 1) * n_samples - 1``.
    Rows are left-padded into batches of ``batch_size``; every position, prompt and generated, is
    steered (``positions="all"``), as in the paper. ``seed`` fixes the draws (module docstring).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to continue")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    runner = get_runner(model)
    if getattr(runner, "tokenizer", None) is None:
        raise ValueError("generating text needs a model with a tokenizer")
    rows = [p for p in prompts for _ in range(config.n_samples)]
    kwargs = dict(config.generate_kwargs(), return_type="continuation")
    out: list[str] = []
    starts = range(0, len(rows), batch_size)
    with evaluating(model), faster_top_p():
        for k, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
            chunk = rows[start : start + batch_size]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                if steerer is None:
                    texts = runner.generate(chunk, lambda tracker: [], **kwargs)  # type: ignore[attr-defined]
                else:
                    texts = steerer.generate(chunk, strength, **kwargs)
            out.extend(texts)
    return out


__all__ = ["PAPER", "GenerationConfig", "continuations"]
