"""LinEAS: gradients cross layers, the end-to-end fit beats the local one, the prox step sparsifies."""

import pytest
import torch

from conftest import native
from lineas_tl import HookedSteerer, collect_activations, global_loss
from lineas_tl.collect import pooled_forward
from lineas_tl.methods.base import FitContext, frozen
from lineas_tl.runner import get_runner


def marked_prompts(n: int, marker: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=g)
    return [[marker] + torch.randint(10, 100, (int(k),), generator=g).tolist() for k in lengths]


def plant_embedding_shift(model, marker: int, scale: float = 1.0, seed: int = 0) -> None:
    """Add a fixed vector to the embeddings of every prompt that starts with ``marker``.

    The source/target gap then lives upstream of every steered site.
    """
    g = torch.Generator().manual_seed(seed)
    embed_std = float(model.embed.original_component.weight.detach().std())
    delta = torch.randn(model.cfg.d_model, generator=g) * embed_std * scale
    state: dict = {}

    def remember_tokens(module, args, kwargs):
        state["tokens"] = args[0] if args else kwargs["input"]

    def shift(act, hook):
        rows = (state["tokens"][:, 0] == marker).to(act.dtype)
        return act + rows[:, None, None] * delta

    model.register_forward_pre_hook(remember_tokens, with_kwargs=True)
    model.hook_dict["hook_embed"].add_hook(shift, is_permanent=True)


def mismatch(model, steerer, source, target, sites):
    target_acts = collect_activations(model, target, sites, progress=False)
    with steerer.steer(1.0):
        source_acts = collect_activations(model, source, sites, progress=False)
    _, per_site = global_loss(
        {s: a.flatten(1) for s, a in source_acts.items()}, {s: a.flatten(1) for s, a in target_acts.items()}
    )
    return per_site


def test_gradient_reaches_every_map_through_downstream_layers(native_model):
    runner = get_runner(native_model)
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    ctx = FitContext(runner, runner.prepare(source), runner.prepare(target), HookedSteerer(native_model).sites)
    maps = ctx.identity_maps()
    with frozen(native_model):
        pooled, _ = pooled_forward(runner, ctx.source.batch(range(8)), ctx.sites, maps=maps, detach=False)
        last = ctx.sites[-1]
        # only the deepest site's mismatch: every upstream map must still receive a gradient
        loss, _ = global_loss({last: pooled[last]}, {last: ctx.pooled("target", [last])[last]})
        loss.backward()
    for site, m in maps.items():
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, site
        assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0, site
    assert all(p.grad is None for p in native_model.parameters())


def test_end_to_end_beats_local_when_the_gap_is_planted_upstream():
    model = native(n_layers=3, seed=0)
    plant_embedding_shift(model, marker=1, scale=1.0)
    source, target = marked_prompts(64, 1, 1), marked_prompts(64, 2, 2)
    final = "blocks.2.hook_out"  # the residual stream after the last block: downstream of every map
    lineas = HookedSteerer(model).fit(source[:32], target[:32], progress=False)
    # the ablation: the same affine maps fitted site by site (without AcT's support range, which
    # changes the map family; see the README's baselines)
    local = HookedSteerer(model).fit(source[:32], target[:32], method="linear_act", support=None, progress=False)
    sites = lineas.sites + [final]
    end_to_end = mismatch(model, lineas, source[32:], target[32:], sites)
    layerwise = mismatch(model, local, source[32:], target[32:], sites)
    print(f"held-out final-layer W2²: LinEAS {end_to_end[final]:.4f}, Linear-AcT {layerwise[final]:.4f}")
    assert end_to_end[final] < layerwise[final]


def test_sparsity_knob_shrinks_support(native_model):
    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    kw = dict(steps=30, lr=1e-2, progress=False, warn=False)
    dense = HookedSteerer(native_model).fit(source, target, **kw)
    sparse = HookedSteerer(native_model).fit(source, target, gamma=5.0, **kw)
    mean = lambda s: sum(s.support().values()) / len(s.support())  # noqa: E731
    assert mean(sparse) < mean(dense)
    assert len(sparse.history_["support_trace"]) > 1


def test_sgd_token_pooling_and_pot_backend(native_model):
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    sgd = HookedSteerer(native_model).fit(source, target, steps=5, optimizer="sgd", lr=0.1, progress=False)
    tokens = HookedSteerer(native_model, pooling="all").fit(source, target, steps=5, progress=False)
    assert sgd.history_["loss"][-1] < sgd.history_["loss"][0]
    assert torch.isfinite(torch.tensor(tokens.history_["loss"])).all()


# ------------------------------------------------------------------ presets (issue 18)
def test_paper_preset_on_a_language_model_is_sgd_cosine_1000_steps_from_the_identity(llama_model, text_sets):
    from lineas_tl.methods.lineas_presets import resolve_preset

    steerer = HookedSteerer(llama_model, sites="paper")
    name, cfg = resolve_preset("paper", steerer.runner)
    assert name == "paper_language"
    assert cfg["optimizer"] == "sgd" and cfg["lr"] == 0.1 and cfg["schedule"] == "cosine" and cfg["steps"] == 1000
    assert cfg["init"] == "identity" and not cfg["early_stop"] and not cfg["standardize"] and cfg["all_targets"]
    src, tgt = text_sets["source"][:8], text_sets["target"][:12]
    h = steerer.fit(src, tgt, preset="paper", steps=4, progress=False, warn=False).history_
    assert h["preset"] == "paper_language" and h["config"]["optimizer"] == "sgd"
    assert h["init_used"] == "identity" and h["warm_start_loss"] is None
    assert h["lr"][0] == pytest.approx(0.1) and h["lr"][-1] < h["lr"][0]  # cosine decay
    # every target prompt in every step: the first loss is the identity's loss against all 12 targets
    assert h["loss"][0] == pytest.approx(h["identity_loss"], rel=1e-5)
    target = collect_activations(llama_model, tgt, steerer.sites, progress=False)
    source = collect_activations(llama_model, src, steerer.sites, progress=False)
    assert float(global_loss(source, target)[0]) == pytest.approx(h["identity_loss"], rel=1e-4)


def test_one_paper_step_is_plain_sgd(native_model):
    """SGD lr 0.1, no momentum: after one step the maps moved by exactly -0.1 x the first gradient."""
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    runner = get_runner(native_model)
    sites = HookedSteerer(native_model, "outputs").sites
    ctx = FitContext(runner, runner.prepare(source), runner.prepare(target), sites)
    maps = ctx.identity_maps()
    with frozen(native_model):
        pooled, _ = pooled_forward(runner, ctx.source.batch(range(8)), sites, maps=maps, detach=False)
        global_loss(pooled, ctx.pooled("target"))[0].backward()
    with pytest.warns(UserWarning, match="paper.s sites"):  # the sublayer outputs are not ln2.hook_out
        s = HookedSteerer(native_model, "outputs").fit(source, target, preset="paper", steps=1, progress=False, warn=False)
    site = sites[0]
    torch.testing.assert_close(s.maps_[site].bias, -0.1 * maps[site].bias.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(s.maps_[site].weight, 1 - 0.1 * maps[site].weight.grad, rtol=1e-4, atol=1e-7)


def test_authors_yaml_preset_keeps_the_adam_recipe(native_model):
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    h = HookedSteerer(native_model).fit(source, target, preset="authors_yaml", steps=2, progress=False, warn=False).history_
    assert h["preset"] == "authors_yaml"
    assert {k: h["config"][k] for k in ("optimizer", "lr", "schedule", "init")} == {
        "optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "init": "identity",
    }  # fmt: skip
    with pytest.raises(ValueError, match="authors_yaml"):
        HookedSteerer(native_model).fit(source, target, preset="yaml", progress=False)


def test_paper_preset_off_the_paper_sites_warns(llama_model, text_sets):
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    with pytest.warns(UserWarning, match="sites='paper'"):
        HookedSteerer(llama_model, "outputs").fit(src, tgt, preset="paper", steps=1, progress=False, warn=False)


# ------------------------------------------------------------------ validation (issue 18)
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -0.1}, "lr"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
        ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"tol": 0.0}, "tol"), ({"tol": -1e-3}, "tol"),
        ({"patience": 0}, "patience"), ({"gamma": -0.1}, "gamma"), ({"gamma": float("nan")}, "gamma"),
        ({"l1": -1.0}, "l1"), ({"batch_size": 0}, "batch_size"), ({"warmup": -1}, "warmup"),
        ({"group_by": "layer"}, "group_by"),
    ],
)  # fmt: skip
def test_bad_hyper_parameters_are_refused_with_the_fix(native_model, kwargs, name):
    from lineas_tl.validate import SteeringInputError

    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    with pytest.raises(SteeringInputError, match=rf"^{name} must .*: pass") as err:
        HookedSteerer(native_model).fit(source, target, progress=False, **kwargs)
    assert isinstance(err.value, ValueError)


def test_lineas_needs_four_prompts_a_set(native_model):
    from lineas_tl.validate import SteeringInputError

    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    with pytest.raises(SteeringInputError, match="LinEAS needs at least 4 source prompts.*got 3"):
        HookedSteerer(native_model).fit(source[:3], target, progress=False)
    with pytest.raises(SteeringInputError, match="LinEAS needs at least 4 target prompts.*got 2"):
        HookedSteerer(native_model).fit(source, target[:2], progress=False)
    ok = HookedSteerer(native_model).fit(source[:4], target[:4], steps=2, progress=False, warn=False)
    assert ok.history_["steps"] == 2


def test_fast_preset_starts_from_the_identity_at_pre_norm_sites(llama_model, text_sets):
    """At ``ln2.hook_out`` the mean-match warm start cost x4.7 perplexity on SmolLM2 (docs/fitting.md):
    the fast preset starts from the identity there, unless ``init`` is passed."""
    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    kw = dict(preset="fast", steps=3, progress=False, warn=False)
    at_norms = HookedSteerer(llama_model, sites="paper").fit(src, tgt, **kw).history_
    assert at_norms["config"]["init"] == "identity" and at_norms["init_used"] == "identity"
    assert "identity" in at_norms["init_reason"] and at_norms["warm_start_loss"] is None
    asked = HookedSteerer(llama_model, sites="paper").fit(src, tgt, init="mean_act", **kw).history_
    assert asked["config"]["init"] == "mean_act" and asked["init_reason"] is None and asked["warm_start_loss"] is not None
    outputs = HookedSteerer(llama_model, "outputs").fit(src, tgt, **kw).history_
    assert outputs["config"]["init"] == "mean_act" and outputs["init_reason"] is None


def test_default_preset_is_the_short_paper_recipe_at_norm_outputs_and_fast_elsewhere(llama_model, text_sets):
    """``preset="auto"``: the paper's SGD recipe cut to 300 steps at the default (paper's) sites, whose
    budget ends the fit without a warning; the fast preset at the sublayer outputs."""
    import warnings

    from lineas_tl import NotConvergedWarning
    from lineas_tl.methods.lineas_presets import PRESETS

    src, tgt = text_sets["source"][:8], text_sets["target"][:8]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        h = HookedSteerer(llama_model).fit(src, tgt, progress=False).history_
    assert h["preset"] == "paper_short" and h["config"] == PRESETS["paper_short"]
    assert PRESETS["paper_short"] == {**PRESETS["paper_language"], "steps": 300}
    assert h["steps"] == 300 and h["init_used"] == "identity" and h["lr"][0] == pytest.approx(0.1)
    assert h["final_loss"] < h["identity_loss"]
    if not h["converged"]:
        assert h["stop_reason"] == "budget"
    with pytest.warns(NotConvergedWarning):  # a budget the caller set is the caller's: it warns
        cut = HookedSteerer(llama_model).fit(src, tgt, steps=3, progress=False).history_
    assert cut["preset"] == "paper_short" and cut["stop_reason"] == "steps"
    fast = HookedSteerer(llama_model, "outputs").fit(src, tgt, steps=3, progress=False, warn=False).history_
    assert fast["preset"] == "fast"


def test_a_diverging_fit_raises_with_the_fix(native_model):
    from lineas_tl.methods.convergence import DIVERGED, check_diverged

    check_diverged([2.0], DIVERGED * 2.0, 1.0, 1, 0.1)  # at the bound: still a fit
    with pytest.raises(FloatingPointError, match=r"diverged: its loss grew from 2 to 201 at step 3.*lower lr \(now 0.1\)") as err:
        check_diverged([2.0, 5.0], 201.0, 1.0, 3, 0.1)
    assert "control_weight" not in str(err.value)
    with pytest.raises(FloatingPointError, match=r"became nan.*smaller control_weight \(now 10\)"):
        check_diverged([], float("nan"), 1.0, 0, 0.1, control_weight=10.0)
    source, target = marked_prompts(8, 1, 1), marked_prompts(8, 2, 2)
    with pytest.raises(FloatingPointError, match="the LinEAS fit diverged.*lower lr"):
        HookedSteerer(native_model).fit(source, target, lr=1e6, steps=5, init="identity", progress=False, warn=False)


def test_restrict_keeps_the_maps_at_the_identity_outside_their_masks(native_model):
    from lineas_tl.methods.iti import head_masks
    from lineas_tl.validate import SteeringInputError

    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    plant_embedding_shift(native_model, 1)
    masks = head_masks(native_model, [[0, 1], [2, 0], [2, 3]])
    kw = dict(steps=25, lr=1e-2, progress=False, warn=False)  # `fast` at hook_z: standardised, mean_act warm start
    fitted = HookedSteerer(native_model, sites=list(masks)).fit(source, target, restrict=masks, **kw)
    for site, mask in masks.items():
        m = fitted.maps_[site]
        assert torch.equal(m.weight[~mask], torch.ones_like(m.weight[~mask])) and not m.bias[~mask].any()
        moved = ((m.weight - 1).abs() > 1e-6) | (m.bias.abs() > 1e-6)
        assert moved[mask].float().mean() > 0.9  # the masked heads do move
    assert fitted.history_["loss"][-1] < fitted.history_["loss"][0]
    # a mask of every coordinate is no restriction: the same maps as a plain fit
    full = {s: torch.ones_like(m) for s, m in masks.items()}
    plain = HookedSteerer(native_model, sites=list(masks)).fit(source, target, **kw)
    everything = HookedSteerer(native_model, sites=list(masks)).fit(source, target, restrict=full, **kw)
    assert all(torch.equal(plain.maps_[s].bias, everything.maps_[s].bias) for s in masks)
    assert all(torch.equal(plain.maps_[s].weight, everything.maps_[s].weight) for s in masks)
    site = next(iter(masks))
    with pytest.raises(SteeringInputError, match=r"boolean tensor of the site's feature shape"):
        HookedSteerer(native_model, sites=list(masks)).fit(source, target, restrict={site: torch.ones(3, dtype=torch.bool)}, **kw)
    with pytest.raises(SteeringInputError, match="which this fit does not steer"):
        HookedSteerer(native_model, sites=[site]).fit(source, target, restrict=masks, **kw)


def test_loss_on_restricted_reads_only_the_masked_coordinates(native_model):
    from lineas_tl.losses import site_losses
    from lineas_tl.methods.iti import head_masks
    from lineas_tl.methods.lineas_loss import coordinate_reader
    from lineas_tl.validate import SteeringInputError

    # by hand: a (2 heads, 2 dims) site with head 1 masked reads columns 2 and 3 of the flat features
    mask = torch.tensor([[False, False], [True, True]])
    acts = {"a": torch.arange(8.0).reshape(2, 4), "b": torch.ones(2, 3)}
    read = coordinate_reader({"a": mask}, "restricted")(acts)
    assert torch.equal(read["a"], torch.tensor([[2.0, 3.0], [6.0, 7.0]])) and torch.equal(read["b"], acts["b"])
    assert coordinate_reader({"a": mask}, "sites")(acts) is acts
    with pytest.raises(SteeringInputError, match="no restrict masks were given: pass restrict="):
        coordinate_reader({}, "restricted")

    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    plant_embedding_shift(native_model, 1)
    masks = head_masks(native_model, [[0, 1], [2, 0]])
    kw = dict(steps=20, lr=1e-2, progress=False, warn=False, restrict=masks)
    sites = list(masks)
    both = {o: HookedSteerer(native_model, sites=sites).fit(source, target, loss_on=o, **kw) for o in ("sites", "restricted")}
    # the untouched model's loss, read at the two masked heads only, computed from the activations
    steerer = both["restricted"]
    pooled = {w: collect_activations(native_model, p, sites, progress=False) for w, p in (("s", source), ("t", target))}
    heads = {s: {w: pooled[w][s].flatten(1)[:, masks[s].flatten()] for w in pooled} for s in sites}
    by_hand = site_losses({s: h["s"] for s, h in heads.items()}, {s: h["t"] for s, h in heads.items()}).mean()
    assert steerer.history_["identity_loss"] == pytest.approx(float(by_hand), rel=1e-4)
    assert both["sites"].history_["identity_loss"] > steerer.history_["identity_loss"]  # the other heads' mismatch too
    assert steerer.history_["loss"][-1] < steerer.history_["loss"][0]
    assert not torch.equal(steerer.maps_[sites[0]].bias, both["sites"].maps_[sites[0]].bias)
    for site, m in masks.items():  # still restricted
        assert not steerer.maps_[site].bias[~m].any()
    with pytest.raises(SteeringInputError, match="^loss_on must be 'sites' or 'restricted'"):
        HookedSteerer(native_model, sites=sites).fit(source, target, loss_on="heads", **kw)
    with pytest.warns(RuntimeWarning, match="loss_on='restricted' reads only some coordinates"):
        HookedSteerer(native_model, sites=sites).fit(source, target, loss_on="restricted", compile=True, **dict(kw, steps=2))


def test_shift_transform_learns_the_mean_difference_and_holds_omega_at_one(native_model):
    from lineas_tl.validate import SteeringInputError

    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    site = HookedSteerer(native_model, "outputs").sites[0]
    kw = dict(steps=400, lr=5e-2, init="identity", progress=False, warn=False)
    shift = HookedSteerer(native_model, sites=[site]).fit(source, target, transform="shift", **kw)
    affine = HookedSteerer(native_model, sites=[site]).fit(source, target, **kw)
    m = shift.maps_[site]
    assert torch.equal(m.weight, torch.ones_like(m.weight)) and m.bias.abs().max() > 0.1
    # by hand: at one site, sorted W2 between (s + b) and t is smallest at b = mean(t) - mean(s), per coordinate
    pooled = {w: collect_activations(native_model, p, [site], progress=False)[site] for w, p in (("s", source), ("t", target))}
    torch.testing.assert_close(m.bias.flatten(), pooled["t"].mean(0) - pooled["s"].mean(0), atol=5e-3, rtol=0)
    assert not torch.equal(affine.maps_[site].weight, torch.ones_like(m.weight))  # the paper's map scales too
    assert affine.history_["final_loss"] < shift.history_["final_loss"]  # and so fits better
    with pytest.raises(SteeringInputError, match="^transform must be 'affine' or 'shift'"):
        HookedSteerer(native_model, sites=[site]).fit(source, target, transform="full", **kw)
    with pytest.raises(SteeringInputError, match="init='linear_act' starts from scaled maps: pass init="):
        HookedSteerer(native_model, sites=[site]).fit(source, target, transform="shift", **dict(kw, init="linear_act"))


def test_head_groups_prox_shrinks_each_head_by_its_own_norm():
    from lineas_tl.maps import AffineMap
    from lineas_tl.methods.lineas_params import _prox, group_norms

    def two_heads() -> dict:
        m = AffineMap((2, 2))
        with torch.no_grad():
            m.bias.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))  # head norms 5 and 0.5
        return {"blocks.0.attn.hook_z": m}

    by_head, by_site = two_heads(), two_heads()
    assert group_norms(by_head, by_head=True)["blocks.0.attn.hook_z"] == pytest.approx([5.0, 0.5])
    # radius tau * sqrt(2) = 1: head 0 scaled by 1 - 1/5, head 1 (norm 0.5) switched off
    _prox(by_head, 0.0, 2**-0.5, by_head=True)
    assert torch.allclose(by_head["blocks.0.attn.hook_z"].bias, torch.tensor([[2.4, 3.2], [0.0, 0.0]]))
    # one group for the site: radius tau * sqrt(4) = sqrt(2) on the norm sqrt(25.25); both heads survive
    _prox(by_site, 0.0, 2**-0.5, by_head=False)
    scale = 1 - 2**0.5 / 25.25**0.5
    assert torch.allclose(by_site["blocks.0.attn.hook_z"].bias, scale * torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    assert torch.equal(by_head["blocks.0.attn.hook_z"].weight, torch.ones(2, 2))  # omega = 1: no deviation to shrink


def test_group_by_head_switches_whole_heads_off(native_model):
    source, target = marked_prompts(16, 1, 1), marked_prompts(16, 2, 2)
    plant_embedding_shift(native_model, 1)
    sites = [f"blocks.{layer}.attn.hook_z" for layer in range(native_model.cfg.n_layers)]
    kw = dict(steps=30, lr=1e-2, progress=False, warn=False, l1=0.0)
    sparse = HookedSteerer(native_model, sites=sites).fit(source, target, gamma=10.0, group_by="head", **kw)
    norms = sparse.history_["group_norms"]
    off = on = 0
    for site, m in sparse.maps_.items():
        moved = ((m.weight - 1).abs() > 0) | (m.bias != 0)  # [n_heads, d_head]
        per_head = moved.any(dim=1)
        assert torch.equal(per_head, moved.all(dim=1))  # a head moves entirely or not at all
        assert len(norms[site]) == native_model.cfg.n_heads
        assert [n > 0 for n in norms[site]] == per_head.tolist()
        off, on = off + int((~per_head).sum()), on + int(per_head.sum())
    assert off > 0 and on > 0
    dense = HookedSteerer(native_model, sites=sites).fit(source, target, **kw)
    assert all(len(v) == 1 for v in dense.history_["group_norms"].values())  # one norm per site by default
