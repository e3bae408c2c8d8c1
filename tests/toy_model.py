"""A two-site toy language model whose activations are written by hand, for hand-computed tests.

Each token id ``t`` embeds to row ``t`` of :data:`EMBED`; ``hook1`` sees that embedding and ``hook2``
sees twice ``hook1``'s (possibly steered) output. With one-token prompts, mean pooling returns the
rows themselves, so every method's fit can be worked out on paper.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

EMBED = torch.tensor(
    [
        [1.0, 10.0],  # 0-2: source rows
        [2.0, 30.0],
        [3.0, 20.0],
        [2.0, 0.0],  # 3-5: target rows
        [4.0, 1.0],
        [6.0, 2.0],
    ]
)
SOURCE = [[0], [1], [2]]
TARGET = [[3], [4], [5]]


class Toy(HookedRootModule):
    """``hook1(E[tokens])`` then ``hook2(2 * that)``; returns ``hook2``'s output as the "logits"."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(EMBED.clone())
        self.hook1 = HookPoint()
        self.hook2 = HookPoint()
        self.setup()

    def forward(self, input: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hook2(2 * self.hook1(self.embed(input)))
