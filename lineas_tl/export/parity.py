"""Does an exported GGUF steer in llama.cpp as the steerer does in TransformerLens?

Free-running greedy text is the wrong yardstick: once one token differs the two texts part for
good, and where that happens depends on the build's quantised arithmetic (issue 17: a correct
export agreed on 0.33 of whole continuations with one build of llama.cpp and more with another).
So the prefix is held fixed. The bridge, steered, writes a greedy continuation of each prompt;
both sides are then fed the same tokens (teacher forcing) and compared position by position on
what the export *changes*:

- **delta cosine**: the cosine between the steering's change in logits in the bridge
  (steered - plain) and in llama.cpp (steered export - plain GGUF), at every continuation position.
  The quantisation error of a correct build is nearly the same with and without the steering, so
  it cancels in the difference; what is left points the same way unless the export is wrong.
- **decisive top-1**: the steered top-1 token agrees at every position where the bridge's margin
  between its top two tokens is larger than twice the largest logit error of the *plain* model at
  that position. A margin above the build's own error cannot be flipped by that error; a position
  inside it can, by any correct build, so it is not counted.

Example:
    >>> report = teacher_forced(model, steerer, "detox.gguf", prompts, plain_gguf="model.gguf")
    >>> report.check()
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lineas_tl.export import llama_cpp


@dataclass(frozen=True)
class Parity:
    """Teacher-forced comparison of an export in llama.cpp with the bridge.

    Attributes:
        delta_cosine: per continuation position (all prompts), the cosine of the steering's logit
            change in the bridge and in llama.cpp.
        top1: share of positions whose steered top-1 token agrees.
        decisive_top1: the same, over positions where the bridge's margin exceeds twice the plain
            model's largest logit error there (1.0 when there are none).
        n_decisive: how many such positions.
        n_positions: how many positions in all.
        plain_error: median over positions of the plain model's largest logit error.
        sequences: the token sequences compared (prompt + the bridge's steered continuation), when
            :func:`teacher_forced` made them.
    """

    delta_cosine: np.ndarray
    top1: float
    decisive_top1: float
    n_decisive: int
    n_positions: int
    plain_error: float
    sequences: list[list[int]] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        cos = self.delta_cosine
        return (
            f"delta cosine median {np.median(cos):.3f} (min {cos.min():.3f}) over {self.n_positions} "
            f"positions; steered top-1 agrees {self.top1:.2f}, at {self.n_decisive} decisive positions "
            f"{self.decisive_top1:.2f}; plain logit error (median of max) {self.plain_error:.3f}"
        )

    def check(self, min_median_cosine: float = 0.9, min_decisive_top1: float = 1.0) -> None:
        """Raise ``AssertionError`` (with the report) unless the export steers like the bridge."""
        ok = np.median(self.delta_cosine) >= min_median_cosine and self.decisive_top1 >= min_decisive_top1
        if not ok:
            raise AssertionError(f"the export does not steer like the bridge: {self}")


def compare(
    tl_plain: Sequence[np.ndarray],
    tl_steered: Sequence[np.ndarray],
    cpp_plain: Sequence[np.ndarray],
    cpp_steered: Sequence[np.ndarray],
) -> Parity:
    """Compare logits ``[positions, vocab]`` per sequence (only the positions to be judged)."""
    cos, agree, decisive_agree, plain_err = [], [], [], []
    for tp, ts, cp, cs in zip(tl_plain, tl_steered, cpp_plain, cpp_steered, strict=True):
        tp, ts, cp, cs = (np.asarray(a, dtype=np.float64) for a in (tp, ts, cp, cs))
        d_tl, d_cpp = ts - tp, cs - cp
        cos.extend((d_tl * d_cpp).sum(-1) / (np.linalg.norm(d_tl, axis=-1) * np.linalg.norm(d_cpp, axis=-1)))
        same = ts.argmax(-1) == cs.argmax(-1)
        top2 = np.sort(ts, axis=-1)[:, -2:]
        error = np.abs(cp - tp).max(-1)
        decisive = (top2[:, 1] - top2[:, 0]) > 2 * error
        agree.extend(same)
        decisive_agree.extend(same[decisive])
        plain_err.extend(error)
    return Parity(
        delta_cosine=np.array(cos),
        top1=float(np.mean(agree)),
        decisive_top1=float(np.mean(decisive_agree)) if decisive_agree else 1.0,
        n_decisive=len(decisive_agree),
        n_positions=len(agree),
        plain_error=float(np.median(plain_err)),
    )


def bridge_continuations(model: Any, tokens: Sequence[list[int]], n_new: int) -> list[list[int]]:
    """Each token sequence extended by ``n_new`` greedy tokens of ``model`` as it runs now
    (steered inside a ``steer`` context); no KV cache, so nothing depends on its bookkeeping."""
    out = []
    with torch.no_grad():
        for seq in tokens:
            x = torch.tensor([seq])
            for _ in range(n_new):
                x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True).to(x.device)], dim=1)
            out.append(x[0].tolist())
    return out


def bridge_logits(model: Any, sequences: Sequence[list[int]]) -> list[np.ndarray]:
    """The model's logits ``[positions, vocab]`` for each sequence, one forward pass each."""
    with torch.no_grad():
        return [model(torch.tensor([s]))[0].float().cpu().numpy() for s in sequences]


def teacher_forced(
    model: Any,
    steerer: Any,
    exported: str | os.PathLike[str] | None,
    prompts: Sequence[str],
    *,
    plain_gguf: str | os.PathLike[str],
    control_vector: str | os.PathLike[str] | None = None,
    strength: float = 1.0,
    n_new: int = 12,
) -> Parity:
    """Compare ``exported`` (or ``plain_gguf`` with ``control_vector``) in llama.cpp with ``steerer``
    on ``model`` at ``strength``, teacher-forced on the bridge's steered greedy continuations.

    llama.cpp runs in a child process (:mod:`lineas_tl.export.llama_cpp`). Prompts are tokenised by
    the bridge with its BOS, as llama.cpp would see them.
    """
    tokens = [model.to_tokens(p)[0].tolist() for p in prompts]
    with steerer.steer(strength):
        seqs = bridge_continuations(model, tokens, n_new)
        tl_steered = bridge_logits(model, seqs)
    tl_plain = bridge_logits(model, seqs)
    cpp_plain = llama_cpp.logits(plain_gguf, seqs)
    cpp_steered = llama_cpp.logits(exported or plain_gguf, seqs, control_vector=control_vector)
    judged = [slice(len(t) - 1, len(s) - 1) for t, s in zip(tokens, seqs)]  # predicting the continuation
    pick = lambda rows: [r[j] for r, j in zip(rows, judged)]  # noqa: E731
    report = compare(pick(tl_plain), pick(tl_steered), pick(cpp_plain), pick(cpp_steered))
    return dataclasses.replace(report, sequences=seqs)


__all__ = ["Parity", "bridge_continuations", "bridge_logits", "compare", "teacher_forced"]
