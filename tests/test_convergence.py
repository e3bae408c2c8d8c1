"""The fast LinEAS preset converges: it reaches the paper recipe's loss in a quarter of its steps.

Losses and step counts are asserted, never wall time (that is in benchmarks/bench_convergence.py).
"""

import warnings

import pytest
import torch

from conftest import boot, native
from lineas_tl import HookedSteerer, collect_activations, global_loss
from lineas_tl.methods.convergence import NotConvergedWarning, Plateau
from lineas_tl.sites import paper_sites, preset_sites, resolve_sites
from test_lineas import marked_prompts, plant_embedding_shift


def massive_coordinates(model, coords=(0, 1, 2), scale: float = 100.0) -> None:
    """Make a few residual coordinates 100x larger, like real models' massive activations."""
    with torch.no_grad():
        for block in model.blocks:
            for linear in (block.attn.o, block.mlp.out):
                w = linear.original_component.weight
                if w.shape[0] == model.cfg.d_model:
                    w[list(coords)] *= scale
                else:
                    w[:, list(coords)] *= scale


def planted(massive: bool = False):
    model = native(n_layers=3, seed=0)
    plant_embedding_shift(model, marker=1, scale=1.0)
    if massive:
        massive_coordinates(model)
    return model


def fit_both(model, source, target, sites="outputs"):
    """The authors' yaml recipe and the fast preset, at the sublayer outputs (default) or ``sites``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        paper = HookedSteerer(model, sites).fit(source, target, preset="authors_yaml", progress=False).history_
    fast = HookedSteerer(model, sites).fit(source, target, preset="fast", progress=False).history_
    return paper, fast


@pytest.mark.parametrize("massive", [False, True], ids=["plain", "massive"])
def test_fast_preset_reaches_the_paper_loss_in_a_quarter_of_its_steps(one_thread, massive):
    model = planted(massive)
    paper, default = fit_both(model, marked_prompts(32, 1, 1), marked_prompts(32, 2, 2))
    print(f"paper {paper['steps']} steps -> {paper['final_loss']:.4g}; default {default['steps']} -> {default['final_loss']:.4g}")
    assert paper["steps"] == 1000
    assert default["converged"] and default["stop_reason"] == "converged"
    assert default["steps"] <= paper["steps"] // 4
    assert default["final_loss"] <= 1.1 * paper["final_loss"]
    assert default["final_loss"] < 0.1 * default["identity_loss"]


def test_default_converges_on_gemma_post_norm_sites(one_thread, gemma_dir, text_sets):
    model = boot(gemma_dir)  # its default sites, the post norms, get the fast preset from "auto"
    paper, default = fit_both(model, text_sets["source"][:32], text_sets["target"][:32], sites=None)
    print(f"paper {paper['steps']} steps -> {paper['final_loss']:.4g}; default {default['steps']} -> {default['final_loss']:.4g}")
    assert default["converged"] and default["steps"] <= paper["steps"] // 4
    assert default["final_loss"] <= 1.1 * paper["final_loss"]


def test_precision_changes_the_maps_not_the_loss_the_fast_fit_reaches(one_thread, llama_dir, text_sets):
    """float32 and float64 take different first steps from the warm start (bias gradients at rounding
    level, Adam's step about lr whatever their size) and stop at maps about 7% apart (relative L2 of
    the deviations from identity; 13% from the identity start): the loss is flat along some
    directions. What the fit reaches, its final loss, agrees to well under 1%."""
    src, tgt = text_sets["source"][:32], text_sets["target"][:32]
    finals = []
    for dtype in (torch.float32, torch.float64):
        steerer = HookedSteerer(boot(llama_dir).to(dtype), "outputs").fit(src, tgt, progress=False)
        assert steerer.history_["converged"]
        finals.append(float(steerer.history_["loss"][-1]))
    assert abs(finals[0] - finals[1]) < 0.005 * finals[1]


def test_gemma_default_sites_are_the_papers_post_norms(gemma_model, llama_model):
    sites = HookedSteerer(gemma_model).sites
    assert sites[:2] == ["blocks.0.ln1_post.hook_out", "blocks.0.ln2_post.hook_out"]
    assert len(sites) == 2 * gemma_model.cfg.n_layers
    # a pre-LN model gets the paper's ln2 outputs by default; "norms" names both pre-sublayer norms
    assert HookedSteerer(llama_model).sites == paper_sites(llama_model)
    norms = resolve_sites(llama_model, ["blocks.0.ln1.hook_out", "blocks.0.ln2.hook_out"])
    assert preset_sites(llama_model, "norms")[:2] == norms
    assert HookedSteerer(llama_model, sites="norms").sites == preset_sites(llama_model, "norms")
    with pytest.raises(ValueError, match="unknown site preset"):
        preset_sites(llama_model, "everything")


def test_history_reports_the_curve_and_how_far_the_maps_moved(one_thread, native_model):
    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    s = HookedSteerer(native_model).fit(source, target, steps=40, progress=False, warn=False)
    h = s.history_
    assert len(h["loss"]) == len(h["time"]) == len(h["lr"]) == h["steps"]
    assert h["initial_loss"] == h["loss"][0] and h["final_loss"] == min(h["loss"])
    # early stopping returns the maps of the lowest loss seen: they reproduce it (full batch)
    target = collect_activations(native_model, target, s.sites, progress=False)
    with s.steer(1.0):
        source = collect_activations(native_model, source, s.sites, progress=False)
    assert float(global_loss(source, target)[0]) == pytest.approx(h["final_loss"], rel=1e-4)
    omega = max(float((m.weight - 1).abs().max()) for m in s.maps_.values())
    bias = max(float(m.bias.abs().max()) for m in s.maps_.values())
    assert h["max_abs_omega_minus_1"] == pytest.approx(omega) and h["max_abs_b"] == pytest.approx(bias)
    assert all(b >= a for a, b in zip(h["time"], h["time"][1:]))


def test_a_fit_cut_short_warns_with_what_to_do(native_model):
    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    with pytest.warns(NotConvergedWarning, match="steps="):
        s = HookedSteerer(native_model).fit(source, target, steps=5, progress=False)
    assert not s.history_["converged"] and s.history_["stop_reason"] == "steps"


def test_presets_and_overrides(native_model):
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    s = HookedSteerer(native_model).fit(source, target, preset="authors_yaml", steps=3, progress=False, warn=False)
    assert s.history_["config"] == {
        "steps": 3, "lr": 1e-3, "schedule": "cosine", "standardize": False, "early_stop": False, "init": "identity",
        "warmup": 0, "optimizer": "adam", "batch_size": None, "all_targets": True,
    }
    assert s.history_["lr"][0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown preset"):
        HookedSteerer(native_model).fit(source, target, preset="slow", progress=False)
    with pytest.raises(ValueError, match="unknown schedule"):
        HookedSteerer(native_model).fit(source, target, schedule="linear", progress=False)


def test_standardised_shift_is_only_a_reparametrisation(native_model):
    """With the same lr schedule, standardising changes the path, never the loss being minimised."""
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    kw = dict(steps=1, lr=1e-30, progress=False, warn=False, init="identity")  # lr must be > 0
    raw = HookedSteerer(native_model).fit(source, target, standardize=False, **kw)
    std = HookedSteerer(native_model).fit(source, target, standardize=True, **kw)
    assert raw.history_["loss"][0] == pytest.approx(std.history_["loss"][0])
    assert all(float(m.bias.abs().max()) < 1e-20 for m in std.maps_.values())
    assert not any(type(m).__name__.startswith("Parametrized") for m in std.maps_.values())


def test_standardised_omega_and_warmup_options(native_model):
    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    s = HookedSteerer(native_model).fit(source, target, preset="fast", standardize="both", warmup=5, steps=30,
                                        gamma=1e-3, progress=False, warn=False)
    h = s.history_
    assert h["lr"][:5] == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3, 1e-2])
    assert h["final_loss"] < h["identity_loss"]
    assert all(type(m).__name__ == "AffineMap" for m in s.maps_.values())  # plain maps again
    assert any(float((m.weight - 1).abs().max()) > 0 for m in s.maps_.values())


def test_plateau_rule_by_hand():
    p = Plateau(tol=0.1, patience=2)
    # progress 10 -> 5 is 5; the next two steps gain 0.4 < 0.1 * 5.4 (the progress by then)
    assert [p.update(x) for x in (10.0, 8.0, 5.0, 4.8, 4.6)] == [False, False, False, False, True]
    assert p.update(4.6)
    fast = Plateau(tol=0.1, patience=2)
    assert not any(fast.update(x) for x in (10.0, 8.0, 6.0, 4.0, 2.0))  # still falling steadily
    # a warm start: progress counts from the reference (the identity's loss), not the first loss
    warm = Plateau(tol=0.1, patience=2, reference=100.0)
    # gain 4 over two steps is under 10% of the 94 gained since the reference: a plateau
    assert [warm.update(x) for x in (10.0, 8.0, 6.0)] == [False, False, True]
    assert not Plateau(tol=0.1, patience=2).update(1.0)
    # a spike after a warm start: the best stays at 10, but the loss is still falling back
    spike = Plateau(tol=0.1, patience=2, reference=20.0)
    assert [spike.update(x) for x in (10.0, 30.0, 25.0, 20.0, 15.0, 10.5, 10.4, 10.3)] == [False] * 7 + [True]
