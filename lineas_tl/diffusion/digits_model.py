"""The digits model: a tiny pixel-space text-to-image pipeline, its recipe, and its training.

A small text-conditional UNet (cross-attention on a jointly trained 2-layer CLIP text encoder with a
word-level tokenizer) learns to denoise the coloured digits of
:mod:`lineas_tl.diffusion.digits_data` (DDPM, epsilon prediction, cosine schedule) and samples with
DDIM. :class:`DigitsConfig` is the recipe (its hash names the cache entry),
:func:`build_digits_pipeline` the untrained pipeline and :func:`train_digits_pipeline` the
training from scratch; the cached loader is :func:`lineas_tl.diffusion.digits.load_digits_pipeline`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
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
from torch import Tensor
from tqdm.auto import tqdm

from lineas_tl.diffusion.digits_data import COLOURS, TEMPLATES, VOCAB, caption, colourise, digit_images
from lineas_tl.diffusion.tiny import _clip_config, _seeded, word_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "QUICK_CONFIG",
    "DigitsConfig",
    "DigitsPipeline",
    "build_digits_pipeline",
    "train_digits_pipeline",
]

FORMAT_VERSION = 1


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
