"""The digits model's ground truth: coloured handwritten digits, their captions, and the judges.

scikit-learn's 1,797 handwritten digits (``load_digits()``, 8x8, labelled), each drawn in one of
three colours (:data:`COLOURS`) and captioned by a template such as ``"a red seven"`` or
``"the digit three in blue ink"`` (:func:`caption`). Because every image the model should draw has
a known colour and digit, steering is measured by ground truth, not by another network's opinion:

* :meth:`DigitsJudge.colour_shares`: the share of ink pixels whose dominant channel is red / green /
  blue (removing "red" should lower the red share for prompts that ask for red);
* :meth:`DigitsJudge.digits`: a logistic-regression digit classifier trained on the real digits
  (held-out accuracy ~0.96), to check the digit survives the colour edit;
* :func:`evaluate_colour_steering`: both judges applied to a fitted steerer on held-out prompts.

The model itself (pipeline, training) is in :mod:`lineas_tl.diffusion.digits_model`; the public
entry point, with the cached loader, is :mod:`lineas_tl.diffusion.digits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "COLOURS",
    "DIGIT_WORDS",
    "EVAL_TEMPLATES",
    "FIT_TEMPLATES",
    "TEMPLATES",
    "VOCAB",
    "DigitsJudge",
    "caption",
    "colourise",
    "digit_images",
    "evaluate_colour_steering",
    "to_array",
]

#: ink colour (RGB in [0, 1]) of each colour word; the dominant channel identifies the colour
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.10),
    "green": (0.12, 0.80, 0.20),
    "blue": (0.15, 0.35, 0.95),
}
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES: tuple[str, ...] = (
    "a {colour} {digit}",
    "the digit {digit} in {colour} ink",
    "a handwritten {digit} in {colour}",
    "a {colour} handwritten digit {digit}",
    "a picture of a {colour} {digit}",
)
#: templates to fit steering on, and held-out templates to evaluate it on (all seen in training)
FIT_TEMPLATES: tuple[int, ...] = (0, 1, 2)
EVAL_TEMPLATES: tuple[int, ...] = (3, 4)
VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(w for t in TEMPLATES for w in t.replace("{colour}", "").replace("{digit}", "").split())
) + tuple(COLOURS) + DIGIT_WORDS


def caption(colour: str, digit: int, template: int = 0) -> str:
    """The prompt of ``digit`` (0-9) drawn in ``colour`` with template number ``template``."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {sorted(COLOURS)}")
    return TEMPLATES[template].format(colour=colour, digit=DIGIT_WORDS[digit])



# ----------------------------------------------------------------------------- data
def digit_images(size: int = 8) -> tuple[Float[Tensor, "n 1 size size"], Tensor]:
    """sklearn's handwritten digits as ``[n, 1, size, size]`` intensities in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    if size != 8:
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return grey, torch.tensor(data.target, dtype=torch.long)


def colourise(grey: Float[Tensor, "n 1 h w"], colour_idx: Tensor) -> Float[Tensor, "n 3 h w"]:
    """Draw each intensity map in its colour (index into :data:`COLOURS`) on black; values in [0, 1]."""
    palette = torch.tensor(list(COLOURS.values()), dtype=grey.dtype)  # [colours, 3]
    return grey * palette[colour_idx][:, :, None, None]


# ----------------------------------------------------------------------------- judges
def to_array(images: Any) -> Float[np.ndarray, "n h w 3"]:
    """Images as a float array ``[n, h, w, 3]`` in [0, 1]: from PIL images, ``"np"`` or ``"pt"`` output."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().float().cpu().numpy()
        return arr.transpose(0, 2, 3, 1) if arr.shape[1] == 3 else arr
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) if images.ndim == 4 else images[None].astype(np.float32)
    if not isinstance(images, (list, tuple)):
        images = [images]
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


@dataclass
class DigitsJudge:
    """Ground-truth measures on generated digit images.

    ``digits()``: a logistic-regression classifier trained on 75% of sklearn's digits at 8x8
    (``accuracy_`` on the other 25%); generated images are reduced to grey (max over channels)
    and area-resized to 8x8 first. ``colour_shares()``: among ink pixels (max channel above
    ``ink``), the share whose dominant channel is red, green and blue.
    """

    ink: float = 0.3
    seed: int = 0
    accuracy_: float = field(init=False)

    def __post_init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x_train, x_test, y_train, y_test = train_test_split(
            data.data / 16.0, data.target, test_size=0.25, random_state=self.seed, stratify=data.target
        )
        self.classifier_ = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        self.accuracy_ = float(self.classifier_.score(x_test, y_test))

    def digits(self, images: Any) -> np.ndarray:
        """Predicted digit (0-9) of each image."""
        grey = torch.from_numpy(to_array(images).max(axis=-1))[:, None]
        if grey.shape[-1] != 8:
            grey = F.adaptive_avg_pool2d(grey, 8)
        return self.classifier_.predict(grey.reshape(len(grey), -1).numpy())

    def colour_shares(self, images: Any) -> Float[np.ndarray, "n 3"]:
        """Per image, the shares of ink pixels whose dominant channel is (red, green, blue).

        An image without ink pixels counts as ``[0, 0, 0]``.
        """
        arr = to_array(images)
        ink = arr.max(axis=-1) > self.ink  # [n, h, w]
        dominant = arr.argmax(axis=-1)
        counts = np.stack([(ink & (dominant == c)).sum(axis=(1, 2)) for c in range(3)], axis=1)
        return counts / np.maximum(ink.sum(axis=(1, 2)), 1)[:, None]


# ----------------------------------------------------------------------------- evaluation
def evaluate_colour_steering(
    steerer: Any,
    judge: DigitsJudge,
    colour: str = "red",
    *,
    templates: Sequence[int] = EVAL_TEMPLATES,
    seeds: Sequence[int] = (0, 1),
    strength: float = 1.0,
    **generate_kwargs: Any,
) -> dict[str, float]:
    """Measure a steerer fitted to remove ``colour`` on held-out prompts, with the judges.

    Prompts: every digit in every template of ``templates``, once in ``colour`` ("concept"
    prompts) and once in each other colour ("other" prompts), each generated with every seed,
    unsteered and steered at ``strength``; the inverse map is applied to the other prompts to
    measure inducing the colour.

    Returns (shares are means over images, in [0, 1]; MAE is the mean absolute pixel difference in
    [0, 1]):
        ``concept_share_unsteered`` / ``concept_share_steered``: share of ``colour`` ink on the
        concept prompts; ``concept_digit_acc_unsteered`` / ``..._steered``: how often the judge
        reads the requested digit; ``other_mae``: steered vs unsteered images of the other
        prompts (same seed); ``other_mae_seed``: two unsteered seeds of the same other prompt (the
        scale of an unrelated change); ``other_pixel_corr``: mean Pearson correlation of steered
        and unsteered other images; ``other_share_unsteered`` / ``..._steered``: share of ``colour``
        ink in the other images; ``other_colour_acc_steered``: how often their own colour still
        dominates; ``induced_share``: share of ``colour`` ink in the other prompts' images under
        the inverse map.
    """
    names = list(COLOURS)
    c = names.index(colour)
    concept = [(caption(colour, d, t), d, c) for t in templates for d in range(10)]
    others = [(caption(o, d, t), d, names.index(o)) for t in templates for d in range(10) for o in names if o != colour]

    def run(items: list[tuple[str, int, int]], seed: int, **kw: Any) -> np.ndarray:
        prompts = [p for p, _, _ in items]
        return to_array(steerer.generate(prompts, seed=seed, output_type="np", **generate_kwargs, **kw))

    out: dict[str, list[float]] = {}

    def add(key: str, values: Any) -> None:
        out.setdefault(key, []).extend(np.atleast_1d(np.asarray(values, dtype=float)).tolist())

    digits_c = np.array([d for _, d, _ in concept])
    own = np.array([k for _, _, k in others])
    for seed in seeds:
        plain_c, steered_c = run(concept, seed, strength=0.0), run(concept, seed, strength=strength)
        add("concept_share_unsteered", judge.colour_shares(plain_c)[:, c])
        add("concept_share_steered", judge.colour_shares(steered_c)[:, c])
        add("concept_digit_acc_unsteered", judge.digits(plain_c) == digits_c)
        add("concept_digit_acc_steered", judge.digits(steered_c) == digits_c)
        plain_o, steered_o = run(others, seed, strength=0.0), run(others, seed, strength=strength)
        add("other_mae", np.abs(steered_o - plain_o).mean(axis=(1, 2, 3)))
        a, b = plain_o.reshape(len(plain_o), -1), steered_o.reshape(len(steered_o), -1)
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        add("other_pixel_corr", (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12))
        shares_plain, shares_steered = judge.colour_shares(plain_o), judge.colour_shares(steered_o)
        add("other_share_unsteered", shares_plain[:, c])
        add("other_share_steered", shares_steered[:, c])
        add("other_colour_acc_unsteered", shares_plain.argmax(1) == own)
        add("other_colour_acc_steered", shares_steered.argmax(1) == own)
        add("induced_share", judge.colour_shares(run(others, seed, strength=strength, inverse=True))[:, c])
        add("other_digit_acc_unsteered", judge.digits(plain_o) == np.array([d for _, d, _ in others]))
    if len(seeds) > 1:
        first, second = run(others, seeds[0], strength=0.0), run(others, seeds[1], strength=0.0)
        add("other_mae_seed", np.abs(first - second).mean(axis=(1, 2, 3)))
    return {k: float(np.mean(v)) for k, v in out.items()}
