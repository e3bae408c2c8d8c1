"""Fitting on a model split across devices: placement logic on the CPU, a real split where two exist."""

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.devices import block_devices, split
from lineas_tl.losses import global_loss
from lineas_tl.methods import FitContext
from lineas_tl.runner import get_runner, input_device
from lineas_tl.sites import resolve_sites

pytestmark = pytest.mark.filterwarnings("ignore:LinEAS stopped")

SITES = ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"]
# LinEAS from the identity: a fit whose arithmetic differences stay at float level. From the default
# Mean-AcT warm start, the bias gradients are at rounding level (the means already match) and Adam's
# first step moves each coordinate by +-lr whatever its size, so the sign of the rounding decides:
# float32 and float64 on one CPU differ by 0.2% in the second step's loss, cuda:0 + CPU by 1%.
WELL_CONDITIONED = {"steps": 5, "lr": 0.05, "init": "identity", "progress": False}


def two_devices() -> tuple[str, str] | None:
    """cuda:0 and cuda:1, or cuda:0 and the CPU on a one-GPU machine; None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cuda:0", "cpu")


def context(model, text_sets) -> FitContext:
    runner = get_runner(model)
    return FitContext(
        runner=runner,
        source=runner.prepare(text_sets["source"][:4]),
        target=runner.prepare(text_sets["target"][:4]),
        sites=resolve_sites(model, SITES),
        progress=False,
    )


def test_site_devices_come_from_the_probe_pass_and_maps_follow_them(llama_model, text_sets):
    ctx = context(llama_model, text_sets)
    assert set(ctx.site_devices().values()) == {torch.device("cpu")}
    # Pretend the last site is computed elsewhere: its map is created there, the others stay.
    ctx._devices[ctx.sites[-1]] = torch.device("meta")
    maps = ctx.identity_maps()
    assert maps[ctx.sites[-1]].weight.device.type == "meta"
    assert {m.weight.device.type for s, m in maps.items() if s != ctx.sites[-1]} == {"cpu"}


def test_split_places_blocks_embedding_and_tied_head(llama_model):
    split(llama_model, {"cpu": 2, "meta": 1})  # meta: placement only, nothing runs
    assert [d.type for d in block_devices(llama_model)] == ["cpu", "cpu", "meta"]
    assert input_device(llama_model).type == "cpu"  # tokens go to the embedding, not to cfg.device
    # the tiny Llama ties its unembedding to the embedding: the head stays with the embedding
    assert next(llama_model.unembed.parameters()).device.type == "cpu"


def test_split_untied_head_goes_to_the_last_device(native_model):
    split(native_model, {"cpu": 1, "meta": 2})
    assert next(native_model.unembed.parameters()).device.type == "meta"
    assert input_device(native_model).type == "cpu"


def test_bad_layout_is_a_clear_error(llama_model):
    with pytest.raises(ValueError, match="summing to the model's 3 blocks"):
        split(llama_model, {"cpu": 2})
    with pytest.raises(TypeError, match="no `embed`"):
        split(torch.nn.Linear(2, 2), {"cpu": 1})


def test_split_forward_fit_and_generation_match_the_unsplit_model(llama_model, text_sets, one_thread):
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    plain = HookedSteerer(llama_model, SITES).fit(src, tgt, steps=5, lr=0.05, progress=False)
    ref = plain.generate(src[:2], max_new_tokens=4, return_type="tokens")
    # Two "devices" that are both the CPU: the move-inputs hooks and placement code all run.
    split(llama_model, {"cpu": 2, torch.device("cpu"): 1})
    again = HookedSteerer(llama_model, SITES).fit(src, tgt, steps=5, lr=0.05, progress=False)
    for s, m in plain.maps_.items():
        torch.testing.assert_close(again.maps_[s].weight, m.weight)
    assert again.generate(src[:2], max_new_tokens=4, return_type="tokens").tolist() == ref.tolist()


@pytest.mark.skipif(two_devices() is None, reason="needs two devices (two GPUs, or one GPU and the CPU)")
def test_global_loss_is_reduced_on_the_first_sites_device():
    first, second = two_devices()  # type: ignore[misc]
    u = {"a": torch.randn(8, 4, device=first), "b": torch.randn(8, 4, device=second)}
    v = {"a": torch.randn(8, 4, device=first), "b": torch.randn(8, 4, device=second)}
    loss, per_site = global_loss(u, v)
    assert loss.device == torch.device(first)
    assert set(per_site) == {"a", "b"}


@pytest.mark.skipif(two_devices() is None, reason="needs two devices (two GPUs, or one GPU and the CPU)")
def test_fit_on_two_devices_matches_one_device(llama_dir, text_sets):
    from conftest import boot

    first, second = two_devices()  # type: ignore[misc]
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    one = boot(llama_dir).to(first)
    ref = HookedSteerer(one, SITES).fit(src, tgt, **WELL_CONDITIONED)
    model = split(boot(llama_dir), {first: 2, second: 1})
    steerer = HookedSteerer(model, SITES).fit(src, tgt, **WELL_CONDITIONED)
    devices = {s: m.weight.device for s, m in steerer.maps_.items()}
    assert devices["blocks.2.mlp.hook_out"] == torch.device(second)
    assert devices["blocks.0.attn.hook_out"] == torch.device(first)
    for s, m in ref.maps_.items():
        torch.testing.assert_close(steerer.maps_[s].weight.cpu(), m.weight.cpu(), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(steerer.maps_[s].bias.cpu(), m.bias.cpu(), atol=1e-4, rtol=1e-3)
    out = steerer.generate(src[:2], max_new_tokens=4, return_type="tokens")
    assert out.shape[0] == 2


@pytest.mark.skipif(two_devices() is None, reason="needs two devices (two GPUs, or one GPU and the CPU)")
@pytest.mark.parametrize("method", ["lineas", "linear_act", "mean_act", "caa", "iti", "actadd"])
def test_every_method_fits_and_steers_a_split_model_like_one_device(method, llama_dir, text_sets):
    """Each map is created on its site's device, and steering the split model gives the one-device
    model's logits (the incremental fits run site by site across the device boundary)."""
    from conftest import boot

    first, second = two_devices()  # type: ignore[misc]
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    kwargs = WELL_CONDITIONED if method == "lineas" else {"progress": False}
    sites = SITES if method not in ("iti", "actadd") else None  # those two choose their own sites
    one = boot(llama_dir).to(first)
    ref = HookedSteerer(one, sites).fit(src, tgt, method=method, **kwargs)
    model = split(boot(llama_dir), {first: 2, second: 1})
    steerer = HookedSteerer(model, sites).fit(src, tgt, method=method, **kwargs)
    assert steerer.maps_.keys() == ref.maps_.keys()
    for site, m in steerer.maps_.items():
        layer = int(site.split(".")[1])
        assert m.weight.device == next(model.blocks[layer].parameters()).device, site
    tokens = one.to_tokens(src[:2])
    with ref.steer(1.0):
        expected = one(tokens).cpu()
    with steerer.steer(1.0):
        got = model(tokens).cpu()
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    assert steerer.generate(src[:2], max_new_tokens=4, return_type="tokens").shape[0] == 2


def test_models_load_passes_a_device_map_through(llama_dir):
    from lineas_tl import models

    model = models.load(str(llama_dir), device_map={"": "cpu"})
    assert input_device(model).type == "cpu"
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 320)
    with pytest.raises((ValueError, OSError), match="mutually exclusive|not both"):
        models.load(str(llama_dir), device="cpu", device_map={"": "cpu"})
