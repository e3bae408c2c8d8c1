"""A real (tiny) text-to-image diffusion model, trained on the CPU, with ground-truth judges.

No diffusion weights ship offline, so this package trains one: scikit-learn's 1,797 handwritten
digits (``load_digits()``, 8x8, labelled), each drawn in one of three colours, captioned by a
template such as ``"a red seven"`` or ``"the digit three in blue ink"``. A small text-conditional
UNet (cross-attention on a jointly trained 2-layer CLIP text encoder with a word-level tokenizer)
learns to denoise them (DDPM, epsilon prediction, cosine schedule) and samples with DDIM.

Because every image the model should draw has a known colour and digit, steering is measured by
ground truth, not by another network's opinion:

* :meth:`DigitsJudge.colour_shares`: the share of ink pixels whose dominant channel is red / green /
  blue (removing "red" should lower the red share for prompts that ask for red);
* :meth:`DigitsJudge.digits`: a logistic-regression digit classifier trained on the real digits
  (held-out accuracy ~0.96), to check the digit survives the colour edit.

This module is the public entry point and holds the cache: :func:`load_digits_pipeline` keeps the
trained weights in ``$LINEAS_TL_CACHE`` (or ``~/.cache/lineas-tl``) under ``digits/``, keyed by the
training config, written atomically; they are never committed. The data, captions and judges live
in :mod:`lineas_tl.diffusion.digits_data`, the pipeline and its training in
:mod:`lineas_tl.diffusion.digits_model`; every public name of both is re-exported here.

Example:
    >>> pipe = load_digits_pipeline()              # trains once (minutes on a CPU), then cached
    >>> image = pipe("a red seven", generator=torch.Generator().manual_seed(0)).images[0]
    >>> judge = DigitsJudge()
    >>> judge.colour_shares([image])               # [[red, green, blue]] shares of ink pixels
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from lineas_tl.atomic import atomic_write
from lineas_tl.diffusion.digits_data import (
    COLOURS,
    DIGIT_WORDS,
    EVAL_TEMPLATES,
    FIT_TEMPLATES,
    TEMPLATES,  # noqa: F401 (importable from here as before; not in __all__)
    VOCAB,  # noqa: F401 (importable from here as before; not in __all__)
    DigitsJudge,
    caption,
    colourise,  # noqa: F401 (importable from here as before; not in __all__)
    digit_images,  # noqa: F401 (importable from here as before; not in __all__)
    evaluate_colour_steering,
    to_array,
)
from lineas_tl.diffusion.digits_model import (
    FORMAT_VERSION,  # noqa: F401 (importable from here as before; not in __all__)
    QUICK_CONFIG,
    DigitsConfig,
    DigitsPipeline,
    build_digits_pipeline,
    train_digits_pipeline,
)

__all__ = [
    "COLOURS",
    "DIGIT_WORDS",
    "EVAL_TEMPLATES",
    "FIT_TEMPLATES",
    "QUICK_CONFIG",
    "DigitsConfig",
    "DigitsJudge",
    "DigitsPipeline",
    "build_digits_pipeline",
    "caption",
    "evaluate_colour_steering",
    "load_digits_pipeline",
    "to_array",
    "train_digits_pipeline",
]


# ----------------------------------------------------------------------------- the cache
def _cache_root() -> Path:
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lineas-tl"


# ``build_digits_pipeline`` and ``train_digits_pipeline`` are read from this module's namespace, so
# patching ``lineas_tl.diffusion.digits.train_digits_pipeline`` (as the tests do) takes effect here.
def load_digits_pipeline(
    config: DigitsConfig = DigitsConfig(),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> DigitsPipeline:
    """The trained digits pipeline: from the cache if there, else trained now and cached.

    Args:
        config: the recipe; a different config is a different cache entry.
        cache_dir: where to cache (default ``$LINEAS_TL_CACHE/digits`` or ``~/.cache/lineas-tl/digits``).
        retrain: ignore (and overwrite) a cached copy.
        progress: show the training progress bar.

    The training record (time, loss, config) is in ``pipe.training_record``.
    """
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "digits"
    weights = root / f"digits-{config.key()}.safetensors"
    meta = weights.with_suffix(".json")
    if weights.exists() and meta.exists() and not retrain:
        pipe = build_digits_pipeline(config)
        state = load_file(str(weights))
        pipe.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        pipe.text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
        pipe.training_record = {**json.loads(meta.read_text()), "from_cache": str(weights)}
        return pipe
    pipe, record = train_digits_pipeline(config, progress=progress)
    tensors = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    tensors |= {f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    pipe.training_record = {**record, "from_cache": None}
    return pipe



