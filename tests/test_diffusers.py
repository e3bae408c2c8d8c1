"""The diffusers adapter on tiny random pipelines built offline (SD-style and SDXL-style).

Fixtures here, not in conftest: a tiny ``StableDiffusionPipeline`` (UNet, 2-layer CLIP text model
with a word-level tokenizer built in code, 2-level VAE, Euler scheduler) and its SDXL sibling.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from lineas_tl import HookedSteerer, collect_activations, global_loss, resolve_sites
from lineas_tl.collect import pooled_forward
from lineas_tl.diffusers import (
    DiffusionRunner,
    HookedPipeline,
    HookedUNet,
    forward_order,
)
from lineas_tl.diffusion.tiny import tiny_pipeline, tiny_sdxl_pipeline, tiny_unet

OBJECTS = ["cat", "dog", "car", "house", "tree", "flower", "bird", "horse", "boat", "apple", "city", "garden"]
STYLES = ["photo", "painting", "drawing", "sketch"]
SOURCE = [f"a {s} of a red {o}" for s in STYLES for o in OBJECTS]  # 48 prompts
TARGET = [p.replace(" red ", " blue ") for p in SOURCE]  # the same prompts, one word changed


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def hooked(pipe):
    h = HookedPipeline(pipe, num_inference_steps=2, guidance_scale=1.0)
    yield h
    h.remove_hook_points()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unet_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.tensor(500), torch.randn(batch, 5, 32, generator=g)


def _flat(acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.flatten(1) for k, v in acts.items()}


def _w2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(global_loss(_flat(a), _flat(b), reduction="sum")[0])


# ----------------------------------------------------------------------------- hook points
def test_hook_points_are_named_after_modules_and_default_to_norms(hooked):
    assert hooked.hook_dict and all(name.startswith("unet.") for name in hooked.hook_dict)
    assert all(hp.name == name for name, hp in hooked.hook_dict.items())
    assert hooked.mod_dict.keys() == hooked.hook_dict.keys()
    modules = dict(hooked.unet.named_modules())
    assert all(name.removeprefix("unet.") in modules for name in hooked.hook_dict)
    defaults = resolve_sites(hooked, None)
    assert defaults == hooked.default_steering_sites()
    assert len(defaults) == 33 and all("norm" in d.rsplit(".", 1)[-1] for d in defaults)
    assert "unet.conv_norm_out" in defaults and "unet.down_blocks.0.attentions.0.transformer_blocks.0.norm1" in defaults
    # block outputs are hook points too, but not default sites
    for block in ("unet.down_blocks.0", "unet.mid_block", "unet.up_blocks.1", "unet.down_blocks.0.attentions.0"):
        assert block in hooked.hook_dict and block not in defaults


@pytest.mark.parametrize("make", [tiny_pipeline, tiny_sdxl_pipeline], ids=["sd", "sdxl"])
def test_hook_order_is_the_forward_order(make):
    pipe = make(seed=1)
    hooked = HookedPipeline(pipe, num_inference_steps=1, guidance_scale=0.0)
    fired: list[str] = []
    hooks = [(name, lambda act, hook: fired.append(hook.name)) for name in hooked.hook_dict]
    with hooked.hooks(fwd_hooks=hooks):
        pipe("a cat", num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    assert fired == list(hooked.hook_dict)  # every hook point fires once, in registration order
    assert forward_order(pipe.unet).index("mid_block") < forward_order(pipe.unet).index("up_blocks.0")


def test_no_hooks_and_identity_hooks_leave_the_unet_bit_identical():
    unet = tiny_unet(seed=3)
    x, t, emb = _unet_inputs()
    with torch.no_grad():
        bare = unet(x, t, encoder_hidden_states=emb).sample
        weights = _state(unet)
        hooked = HookedUNet(unet)
        wrapped = hooked(x, t, encoder_hidden_states=emb).sample
        identity = [(name, lambda act, hook: act) for name in hooked.hook_dict]
        with_identity = hooked.run_with_hooks(x, t, encoder_hidden_states=emb, fwd_hooks=identity).sample
    assert torch.equal(bare, wrapped) and torch.equal(bare, with_identity)
    hooked.remove_hook_points()
    assert all(not m._forward_hooks for m in unet.modules())
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    # HookedRootModule.setup() was never run over the UNet: diffusers' Upsample2D keeps its `name`
    assert unet.up_blocks[0].upsamplers[0].name == "conv"


def test_tuple_outputs_are_hooked_on_their_first_element():
    unet = tiny_unet(seed=4)
    hooked = HookedUNet(unet, "blocks")
    x, t, emb = _unet_inputs()
    seen: dict[str, tuple[int, ...]] = {}

    def record(act, hook):
        assert isinstance(act, torch.Tensor)
        seen[hook.name] = tuple(act.shape)

    with torch.no_grad():
        base = hooked(x, t, encoder_hidden_states=emb).sample
        hooked.run_with_hooks(x, t, encoder_hidden_states=emb, fwd_hooks=[(n, record) for n in hooked.hook_dict])
        # down block: (hidden, residuals) -> hidden; attention block: (sample,) -> sample
        assert seen["unet.down_blocks.0"] == (2, 16, 4, 4)
        assert seen["unet.down_blocks.0.attentions.0"] == (2, 16, 8, 8)
        assert seen["unet.mid_block"] == (2, 32, 4, 4)
        for site in ("unet.down_blocks.0", "unet.down_blocks.0.attentions.0", "unet.up_blocks.0"):
            out = hooked.run_with_hooks(
                x, t, encoder_hidden_states=emb, fwd_hooks=[(site, lambda act, hook: act + 1.0)]
            ).sample
            assert out.shape == base.shape and not torch.allclose(out, base), site
    hooked.remove_hook_points()


def test_run_with_cache_on_the_unet():
    hooked = HookedUNet(tiny_unet(seed=5))
    x, t, emb = _unet_inputs(batch=3)
    names = ["unet.down_blocks.0.resnets.0.norm1", "unet.mid_block.attentions.0.transformer_blocks.0.norm2"]
    with torch.no_grad():
        _, cache = hooked.run_with_cache(x, t, encoder_hidden_states=emb, names_filter=names)
    assert cache[names[0]].shape == (3, 16, 8, 8)  # GroupNorm: [batch, channels, h, w]
    assert cache[names[1]].shape == (3, 16, 32)  # LayerNorm in a transformer block: [batch, tokens, dim]
    runner = DiffusionRunner(hooked)  # features() only needs the activation
    assert runner.features(names[0], cache[names[0]]) == (1, (16,))
    assert runner.features(names[1], cache[names[1]]) == (2, (32,))
    hooked.remove_hook_points()


def test_hook_module_selection():
    unet = tiny_unet(seed=6)
    norms = HookedUNet(unet, "norms")
    assert len(norms.hook_dict) == 33
    norms.remove_hook_points()
    custom = HookedUNet(unet, r"unet\.mid_block\..*norm1")
    assert list(custom.hook_dict) == [  # forward order: resnet, attention, resnet
        "unet.mid_block.resnets.0.norm1",
        "unet.mid_block.attentions.0.transformer_blocks.0.norm1",
        "unet.mid_block.resnets.1.norm1",
    ]
    custom.remove_hook_points()
    assert all(not m._forward_hooks for m in unet.modules())
    with pytest.raises(ValueError, match="selected no module"):
        HookedUNet(unet, r"nothing\.matches")


# ----------------------------------------------------------------------------- fitting
def test_fit_moves_held_out_source_toward_target_and_keeps_weights(pipe, hooked):
    before = _state(hooked)
    train_s, held_s = SOURCE[::2], SOURCE[1::2]
    train_t, held_t = TARGET[::2], TARGET[1::2]
    steerer = HookedSteerer(hooked).fit(train_s, train_t, steps=60, lr=2e-2, batch_size=16, progress=False)
    assert set(steerer.maps_) == set(hooked.default_steering_sites())
    target = collect_activations(hooked, held_t, progress=False)
    w2_before = _w2(collect_activations(hooked, held_s, progress=False), target)
    w2_after = _w2(collect_activations(hooked, held_s, maps=steerer.maps_, progress=False), target)
    print(f"held-out summed W2^2: {w2_before:.4f} -> {w2_after:.4f}")
    assert w2_after <= 0.5 * w2_before
    # On this tiny UNet the Mean-AcT warm start scores a higher training loss than the identity
    # (about 0.057 vs 0.034) and 60 minibatch steps end near 0.05: the held-out check above is the
    # one that holds; the loss must still fall from where the fit started.
    losses = steerer.history_["loss"]
    assert sum(losses[-10:]) < sum(losses[:10])
    # inverse map: target prompts pushed toward the source set (inducing the concept)
    source = collect_activations(hooked, held_s, progress=False)
    induced = _w2(collect_activations(hooked, held_t, maps=_inverse(steerer), progress=False), source)
    assert induced < 0.5 * _w2(target, source)
    # generating with steering leaves the weights as they were
    steerer.generate("a photo of a red cat", strength=1.0, seed=0)
    after = _state(hooked)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(hp.fwd_hooks for hp in hooked.hook_dict.values())


def _inverse(steerer: HookedSteerer) -> dict:
    """The inverse maps as plain maps (T^{-1}(z) = (z - b) / w), to read inverse-steered activations."""
    from lineas_tl.maps import AffineMap

    out = {}
    for site, m in steerer.maps_.items():
        inv = AffineMap(m.feature_shape, m.feature_axis)
        with torch.no_grad():
            inv.weight.copy_(1 / m.weight)
            inv.bias.copy_(-m.bias / m.weight)
        out[site] = inv
    return out


def test_generation_strength_zero_is_bit_identical_and_seeded(pipe, hooked):
    steerer = HookedSteerer(hooked).fit(SOURCE[:8], TARGET[:8], steps=5, lr=5e-2, progress=False)
    prompt = "a photo of a red horse"
    plain = pipe(prompt, num_inference_steps=2, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    zero = steerer.generate(prompt, strength=0.0, seed=7, output_type="np")
    assert np.array_equal(plain, zero)
    image = steerer.generate(prompt, strength=1.0, seed=7)
    assert isinstance(image, Image.Image) and image.size == (16, 16)
    again = steerer.generate(prompt, strength=1.0, seed=7)
    assert np.array_equal(np.asarray(image), np.asarray(again))  # same seed, same image
    steered = steerer.generate(prompt, strength=1.0, seed=7, output_type="np")
    other_seed = steerer.generate(prompt, strength=1.0, seed=8, output_type="np")
    assert not np.array_equal(steered, zero) and not np.array_equal(steered, other_seed)
    batch = steerer.generate([prompt, "a photo of a red dog"], strength=0.0, seed=7, output_type="np")
    assert batch.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(batch[0], plain, atol=1e-5)  # prompt i uses seed + i (batched numerics)
    images = steerer.generate([prompt, prompt], strength=1.0, seed=7)
    assert isinstance(images, list) and len(images) == 2
    # the steer() context on the pipeline's own call, with classifier-free guidance
    with steerer.steer(strength=1.0):
        guided = hooked(prompt, num_inference_steps=2, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    unsteered = pipe(prompt, num_inference_steps=2, guidance_scale=4.0,
                     generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    assert not np.array_equal(guided, unsteered)
    # with guidance the steered UNet batch is [uncond, cond]: the maps apply to both halves
    batch_sizes: list[int] = []
    record = [("unet.conv_norm_out", lambda act, hook: batch_sizes.append(act.shape[0]))]
    with hooked.hooks(fwd_hooks=record):
        steerer.generate(prompt, strength=1.0, seed=7, guidance_scale=4.0)
    assert batch_sizes == [2, 2]  # two denoising steps, each on [uncond, cond]


def test_multi_step_pooling_averages_steps_and_reads_the_conditional_half(pipe):
    sites = ["unet.mid_block.resnets.0.norm1", "unet.up_blocks.1.attentions.0.transformer_blocks.0.norm1"]
    prompts = SOURCE[:3]
    per_step = []
    for step in range(3):
        h = HookedPipeline(pipe, "norms", pool_steps=step, num_inference_steps=3, guidance_scale=4.0)
        per_step.append(collect_activations(h, prompts, sites, progress=False))
        h.remove_hook_points()
    h = HookedPipeline(pipe, "norms", pool_steps=[0, 2], num_inference_steps=3, guidance_scale=4.0)
    some = collect_activations(h, prompts, sites, progress=False)
    h.remove_hook_points()
    for site in sites:
        torch.testing.assert_close(some[site], (per_step[0][site] + per_step[2][site]) / 2, rtol=1e-5, atol=1e-6)
    h = HookedPipeline(pipe, "norms", pool_steps="all", num_inference_steps=3, guidance_scale=4.0)
    runner = h.lineas_runner()
    prepared = runner.prepare(prompts)
    assert prepared.n_steps == 3
    mean = collect_activations(h, prompts, sites, progress=False)
    for site in sites:
        expected = torch.stack([p[site] for p in per_step]).mean(0)
        torch.testing.assert_close(mean[site], expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(per_step[0][site], per_step[2][site])
    # with guidance the UNet batch is [uncond, cond]: fitting reads the prompt's own (cond) half
    args, kwargs = prepared.batch([0, 1]).kwargs["steps"][0]
    ids = pipe.tokenizer(prompts[:2], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
    torch.testing.assert_close(kwargs["encoder_hidden_states"], cond)
    # step 0 reads the seeded latent: prompt i uses seed + i
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(h.seed + 1))
    pipe.scheduler.set_timesteps(3)
    scaled = noise * pipe.scheduler.init_noise_sigma / (pipe.scheduler.sigmas[0] ** 2 + 1) ** 0.5  # Euler input
    torch.testing.assert_close(args[0][1:2], scaled, rtol=1e-4, atol=1e-5)
    h.remove_hook_points()


def test_sdxl_pipeline_fits_and_generates():
    pipe = tiny_sdxl_pipeline(seed=2)
    hooked = HookedPipeline(pipe, num_inference_steps=1, guidance_scale=0.0)  # SDXL-Turbo / DMD2 style
    assert len(hooked.default_steering_sites()) == 33
    steerer = HookedSteerer(hooked).fit(SOURCE[:12], TARGET[:12], steps=15, lr=5e-3, progress=False)
    assert steerer.history_["final_loss"] < steerer.history_["identity_loss"]
    prepared = hooked.lineas_runner().prepare(SOURCE[:2])
    _, kwargs = prepared.batch([0, 1]).kwargs["steps"][0]
    assert kwargs["added_cond_kwargs"]["text_embeds"].shape[0] == 2  # SDXL conditioning recorded per prompt
    plain = pipe("a red cat", num_inference_steps=1, guidance_scale=0.0,
                 generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert np.array_equal(plain, steerer.generate("a red cat", strength=0.0, seed=3, output_type="np"))
    assert not np.array_equal(plain, steerer.generate("a red cat", strength=1.0, seed=3, output_type="np"))


def test_half_precision_pipeline():
    pipe = tiny_pipeline(seed=0, dtype=torch.float16)
    hooked = HookedPipeline(pipe, num_inference_steps=1, guidance_scale=0.0)
    steerer = HookedSteerer(hooked).fit(SOURCE[:4], TARGET[:4], steps=3, lr=1e-2, progress=False)
    assert all(m.weight.dtype == torch.float32 for m in steerer.maps_.values())  # maps stay float32
    assert next(iter(pipe.unet.parameters())).dtype == torch.float16
    plain = pipe("a red cat", num_inference_steps=1, guidance_scale=0.0,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    zero = steerer.generate("a red cat", strength=0.0, seed=0, output_type="np")
    assert np.array_equal(plain, zero)
    assert np.isfinite(steerer.generate("a red cat", strength=1.0, seed=0, output_type="np")).all()


# ----------------------------------------------------------------------------- errors
def test_clear_errors(pipe, hooked):
    runner = hooked.lineas_runner()
    with pytest.raises(TypeError, match="single string"):
        runner.prepare("a red cat")
    with pytest.raises(TypeError, match="text prompts"):
        runner.prepare([[1, 2, 3]])
    with pytest.raises(ValueError, match="empty"):
        runner.prepare([])
    with pytest.raises(ValueError, match="not a hook point"):
        HookedSteerer(hooked, sites=["unet.down_blocks.0.resnets.0.norm9"])
    with pytest.raises(ValueError, match=re.escape("Did you mean")):
        HookedSteerer(hooked, sites="unet.mid_block.resnets.0.norm")
    with pytest.raises(TypeError, match="HookedPipeline"):
        HookedSteerer(HookedUNet(tiny_unet(seed=9)))
    with pytest.raises(TypeError, match="has no `unet`"):
        HookedPipeline(object())
    with pytest.raises(ValueError, match="pool_steps"):
        HookedPipeline(tiny_pipeline(seed=9), pool_steps=-1)
    late = HookedPipeline(tiny_pipeline(seed=9), pool_steps=5, num_inference_steps=2)
    with pytest.raises(ValueError, match="ran only 2 UNet step"):
        late.lineas_runner().prepare(["a cat"])


def test_pooled_forward_uses_spatial_mean(hooked):
    site = "unet.down_blocks.0.resnets.0.norm1"
    runner = hooked.lineas_runner()
    batch = runner.prepare(SOURCE[:2]).batch([0, 1])
    pooled, shapes = pooled_forward(runner, batch, [site])
    args, kwargs = batch.kwargs["steps"][0]
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), hooked.hooks(fwd_hooks=[(site, lambda act, hook: store.setdefault("a", act))]):
        hooked.unet(*args, **kwargs)
    assert shapes[site] == (1, (16,))
    torch.testing.assert_close(pooled[site], store["a"].mean(dim=(2, 3)))


def test_save_and_load_round_trip(tmp_path, hooked):
    steerer = HookedSteerer(hooked).fit(SOURCE[:8], TARGET[:8], steps=3, lr=1e-2, progress=False)
    steerer.save(tmp_path / "red")
    loaded = HookedSteerer.load(tmp_path / "red", hooked)
    assert loaded.maps_.keys() == steerer.maps_.keys()
    a = steerer.generate("a photo of a red cat", strength=1.0, seed=1, output_type="np")
    b = loaded.generate("a photo of a red cat", strength=1.0, seed=1, output_type="np")
    assert np.array_equal(a, b)


def test_paper_sites_and_preset_on_a_unet(pipe, hooked):
    from lineas_tl.methods.lineas_presets import resolve_preset

    norms = [n for n in hooked.hook_dict if re.fullmatch(r".*norm[^.]*", n.split(".")[-1])]
    assert norms and resolve_sites(hooked, "paper") == norms == hooked.default_steering_sites()
    blocks = HookedPipeline(pipe, "blocks")
    with pytest.raises(ValueError, match="no normalisation layer"):
        resolve_sites(blocks, "paper")
    blocks.remove_hook_points()
    name, cfg = resolve_preset("paper", hooked.lineas_runner())
    assert name == "paper_unet"
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["steps"], cfg["init"]) == ("adamw", 1e-4, 4, 1000, "identity")
    steerer = HookedSteerer(hooked, sites="paper").fit(SOURCE[:8], TARGET[:8], preset="paper", steps=2, progress=False, warn=False)
    h = steerer.history_
    assert h["preset"] == "paper_unet" and h["lr"][0] == pytest.approx(1e-4) and h["config"]["batch_size"] == 4
