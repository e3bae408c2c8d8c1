"""A real (tiny) text-to-image diffusion model, trained on the CPU, with ground-truth judges.

No diffusion weights ship offline, so this module trains one: scikit-learn's 1,797 handwritten
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

The trained weights are cached in ``$LINEAS_TL_CACHE`` (or ``~/.cache/lineas-tl``) under
``digits/``, keyed by the training config, written atomically; they are never committed.

Example:
    >>> pipe = load_digits_pipeline()              # trains once (minutes on a CPU), then cached
    >>> image = pipe("a red seven", generator=torch.Generator().manual_seed(0)).images[0]
    >>> judge = DigitsJudge()
    >>> judge.colour_shares([image])               # [[red, green, blue]] shares of ink pixels
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from lineas_tl.diffusion.tiny import _clip_config, _seeded, word_tokenizer

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

FORMAT_VERSION = 1

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


def _cache_root() -> Path:
    env = os.environ.get("LINEAS_TL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lineas-tl"


# ----------------------------------------------------------------------------- the pipeline
class DigitsPipeline(DiffusionPipeline):
    """A pixel-space text-to-image pipeline (no VAE): CLIP-style text encoder, UNet, DDIM.

    Called like ``StableDiffusionPipeline``: ``pipe(prompt, num_inference_steps, guidance_scale,
    generator, height, width, output_type)``; ``output_type`` is ``"pil"``, ``"np"`` (``[n, h, w, 3]``
    in [0, 1]), ``"pt"`` (``[n, 3, h, w]`` in [0, 1]) or ``"latent"`` (the raw ``[-1, 1]`` sample).
    With ``guidance_scale > 1`` the UNet batch is ``[uncond, cond]`` (the model was trained with
    10% empty captions).
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: Any, tokenizer: Any, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def encode_prompt(self, prompts: list[str], device: torch.device | None = None) -> Float[Tensor, "n tokens dim"]:
        """The text encoder's last hidden state for each prompt, padded to ``model_max_length``."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(device or self.text_encoder.device))[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 10,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        num_images_per_prompt: int = 1,
    ) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        device, dtype = self.unet.device, self.unet.dtype
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, height or size, width or size)
        cond = self.encode_prompt(prompts, device).to(dtype)
        cfg = guidance_scale > 1.0
        emb = torch.cat([self.encode_prompt([""] * len(prompts), device).to(dtype), cond]) if cfg else cond
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            eps = self.unet(inp, t, encoder_hidden_states=emb, return_dict=False)[0]
            if cfg:
                uncond, cond_eps = eps.chunk(2)
                eps = uncond + guidance_scale * (cond_eps - uncond)
            x = self.scheduler.step(eps, t, x, return_dict=False)[0]
        if output_type == "latent":
            images: Any = x
        else:
            pt = (x.float() / 2 + 0.5).clamp(0, 1)
            if output_type == "pt":
                images = pt
            else:
                images = pt.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
                elif output_type != "np":
                    raise ValueError(f"unknown output_type {output_type!r}; use 'pil', 'np', 'pt' or 'latent'")
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


@dataclass(frozen=True)
class DigitsConfig:
    """Architecture and training recipe of the digits model (its hash names the cache file).

    Attributes:
        steps: optimiser steps (batch ``batch_size``); 2,000 take a few minutes on 2 CPU cores.
        size: image side; 8 is sklearn's own resolution (larger sizes upscale bilinearly and
            cost ~4x per doubling).
        channels: UNet widths per resolution; cross-attention on every level but the first.
        text_dim, text_layers: the CLIP text encoder's width and depth (trained jointly).
        uncond_prob: share of empty captions (enables classifier-free guidance).
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    size: int = 8
    channels: tuple[int, ...] = (32, 64)
    text_dim: int = 32
    text_layers: int = 2
    uncond_prob: float = 0.1
    seed: int = 0
    version: int = FORMAT_VERSION

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: a reduced recipe (~300 steps of 16 images: half a minute on a CPU) for quick runs and CI; it has
#: learned the colours only partly and the digit shapes not at all, so its numbers are indicative
QUICK_CONFIG = DigitsConfig(steps=300, batch_size=16)


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )


def build_digits_pipeline(config: DigitsConfig = DigitsConfig()) -> DigitsPipeline:
    """The digits pipeline with random weights (deterministic by ``config.seed``)."""
    from transformers import CLIPTextModel

    tokenizer = word_tokenizer(VOCAB, max_length=12)
    n = len(config.channels)
    with _seeded(config.seed):
        unet = UNet2DConditionModel(
            sample_size=config.size,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=config.channels,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            cross_attention_dim=config.text_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(_clip_config(tokenizer, config.text_dim, config.text_layers, 4))
    pipe = DigitsPipeline(unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def train_digits_pipeline(
    config: DigitsConfig = DigitsConfig(), *, progress: bool = True
) -> tuple[DigitsPipeline, dict[str, Any]]:
    """Train the digits model from scratch (no cache); returns the pipeline and a training record.

    Each step draws a batch of digits, a random colour and caption template for each (an empty
    caption with probability ``uncond_prob``), noises the ``[-1, 1]`` image at a random timestep and
    regresses the noise (MSE), updating the UNet and the text encoder together (AdamW, cosine
    learning rate with a 5% warm-up).
    """
    pipe = build_digits_pipeline(config)
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    grey, labels = digit_images(config.size)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    warmup = max(1, config.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(config.seed)
    alphas = scheduler.alphas_cumprod
    unet.train()
    text_encoder.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="train digits", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(grey), (config.batch_size,), generator=gen)
        colour = torch.randint(len(COLOURS), (config.batch_size,), generator=gen)
        template = torch.randint(len(TEMPLATES), (config.batch_size,), generator=gen)
        drop = torch.rand(config.batch_size, generator=gen) < config.uncond_prob
        names = list(COLOURS)
        captions = [
            "" if d else caption(names[int(c)], int(labels[i]), int(t))
            for i, c, t, d in zip(idx.tolist(), colour, template, drop)
        ]
        x0 = colourise(grey[idx], colour) * 2 - 1
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(scheduler.config.num_train_timesteps, (config.batch_size,), generator=gen)
        a = alphas[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = pipe.tokenizer(
            captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        emb = text_encoder(ids)[0]
        loss = F.mse_loss(unet(xt, t, encoder_hidden_states=emb).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    unet.eval()
    text_encoder.eval()
    record = {
        "config": dataclasses.asdict(config),
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(np.mean(losses[-100:])),
        "first_loss": float(np.mean(losses[:20])),
        "torch_threads": torch.get_num_threads(),
    }
    return pipe, record


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
    _atomic_write(weights, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
    _atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    pipe.training_record = {**record, "from_cache": None}
    return pipe


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same directory, then rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
