"""Tiny random diffusers pipelines built offline, deterministic by seed (tests, benchmarks, tutorials).

Nothing is downloaded: every component is built from a config in code, and the tokenizer is a
word-level ``PreTrainedTokenizerFast`` made from a word list (CLIP-style: lower-cased, wrapped in
``<|startoftext|> ... <|endoftext|>``, padded with ``<|endoftext|>``).

Example:
    >>> pipe = tiny_pipeline(seed=0)                      # StableDiffusionPipeline, 16x16 images
    >>> image = pipe("a photo of a cat", num_inference_steps=2, guidance_scale=1.0).images[0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "DEFAULT_WORDS",
    "sd15_unet_config",
    "tiny_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_unet",
    "word_tokenizer",
]

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"

DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "with", "and", "photo", "picture", "painting", "drawing",
    "image", "small", "big", "red", "green", "blue", "yellow", "black", "white", "dark", "bright",
    "cat", "dog", "car", "house", "tree", "flower", "bird", "horse", "boat", "apple", "sky", "sea",
    "mountain", "city", "street", "garden", "forest", "beach", "snow", "rain", "sun", "moon",
    "night", "day", "old", "new", "happy", "sad", "cute", "ugly", "wooden", "metal", "glass",
    "stone", "portrait", "landscape", "style", "sketch", "watercolor", "oil", "cartoon",
)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (the caller's RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def word_tokenizer(words: Sequence[str] = DEFAULT_WORDS, max_length: int = 16) -> Any:
    """A word-level, CLIP-shaped tokenizer built in code (no files, no download).

    Ids: ``0 = <|startoftext|>``, ``1 = <|endoftext|>`` (also the padding token, as in CLIP),
    ``2 = <|unk|>``, then ``words`` in order. Text is lower-cased and split on whitespace and
    punctuation; unknown words map to ``<|unk|>``.

    Args:
        words: the vocabulary (duplicates are ignored).
        max_length: ``model_max_length``: pipelines pad and truncate prompts to it.

    Returns:
        a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=max_length,
    )


def _clip_config(tokenizer: Any, hidden: int, layers: int, heads: int, projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim or hidden,
        hidden_act="gelu",
    )


def tiny_unet(
    seed: int = 0,
    *,
    sample_size: int = 8,
    in_channels: int = 4,
    channels: tuple[int, ...] = (16, 32),
    cross_attention_dim: int = 32,
    **overrides: Any,
) -> Any:
    """A tiny ``UNet2DConditionModel`` (SD-1.5 layout: cross-attention down/up blocks, a mid block).

    With the defaults: two resolutions, one resnet per block, 0.2M parameters, 33 normalisation
    layers (GroupNorms in resnets and transformer inputs, LayerNorms in transformer blocks).
    """
    from diffusers import UNet2DConditionModel

    n = len(channels)
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "layers_per_block": 1,
        "block_out_channels": channels,
        "down_block_types": ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    config.update(overrides)
    with _seeded(seed):
        return UNet2DConditionModel(**config).eval()


def _tiny_vae(seed: int, image_channels: int = 3, latent_channels: int = 4) -> Any:
    from diffusers import AutoencoderKL

    with _seeded(seed):
        return AutoencoderKL(
            in_channels=image_channels,
            out_channels=image_channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            latent_channels=latent_channels,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=16,
        ).eval()


def tiny_pipeline(
    seed: int = 0,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    scheduler: str = "euler",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A tiny random ``StableDiffusionPipeline``: 8x8 latents, 16x16 RGB images, all offline.

    Components: :func:`tiny_unet`, a 2-layer CLIP text model (width 32) with a
    :func:`word_tokenizer` over ``words``, a 2-level ``AutoencoderKL`` (scale factor 2), and an Euler
    (``scheduler="euler"``, trailing timesteps as in SD-Turbo) or DDIM (``"ddim"``) scheduler. The
    same seed gives the same weights; no safety checker.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = word_tokenizer(words)
    with _seeded(seed + 1):
        text_encoder = CLIPTextModel(_clip_config(tokenizer, 32, 2, 4)).eval()
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(seed + 2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def tiny_sdxl_pipeline(seed: int = 0, *, words: Sequence[str] = DEFAULT_WORDS, scheduler: str = "euler") -> Any:
    """A tiny random ``StableDiffusionXLPipeline`` (two text encoders, ``text_time`` added conditioning).

    The UNet's ``added_cond_kwargs`` (pooled text embeddings and size/crop time ids) make it the
    architecture of SDXL-Turbo, SDXL-Lightning and DMD2; images are 16x16.
    """
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = word_tokenizer(words)
    with _seeded(seed + 1):
        te1 = CLIPTextModel(_clip_config(tokenizer, 32, 2, 4)).eval()
    with _seeded(seed + 3):
        te2 = CLIPTextModelWithProjection(_clip_config(tokenizer, 32, 2, 4, projection_dim=32)).eval()
    unet = tiny_unet(
        seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        use_linear_projection=True,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(seed + 2),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=word_tokenizer(words),
        unet=unet,
        scheduler=_scheduler(scheduler),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduler(name: str) -> Any:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    common: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
    }
    if name == "euler":
        return EulerDiscreteScheduler(timestep_spacing="trailing", **common)
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing", **common)
    raise ValueError(f"unknown scheduler {name!r}; choose 'euler' or 'ddim'")


def sd15_unet_config() -> dict[str, Any]:
    """The UNet config of Stable Diffusion 1.5 (860M parameters), to build a random one offline."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
