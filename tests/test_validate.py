"""Bad input gets the library's own clear error, never a NaN map, a silent blank generation or a
traceback from deep inside torch. Pinned cases from issue 17, then a property-based test that throws
malformed prompts, strengths, sites and hyper-parameters at the public API."""

from __future__ import annotations

import math
import traceback

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineas_tl import HookedSteerer
from lineas_tl.validate import SteeringInputError, check_number, check_prompts, check_strength

pytestmark = pytest.mark.filterwarnings("ignore")  # NotConvergedWarning on the short fits


@pytest.fixture(scope="module")
def tiny(gpt2_dir):
    from conftest import SOURCE_WORDS, TARGET_WORDS, boot, make_prompts

    model = boot(gpt2_dir)
    src, tgt = make_prompts(SOURCE_WORDS, 8, seed=1), make_prompts(TARGET_WORDS, 8, seed=2)
    steerer = HookedSteerer(model).fit(src, tgt, method="mean_act", progress=False)
    return model, steerer, src, tgt


def raised_by_lineas_tl(err: BaseException) -> bool:
    """The innermost frame that raised ``err`` is the library's (a check), not torch's or NumPy's."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "lineas_tl" in frames[-1].filename.replace("\\", "/").split("/")


# ------------------------------------------------------------------------- pinned cases (issue 17)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "strong", None, True])
def test_nan_inf_and_non_numbers_are_refused_as_strengths_everywhere(tiny, bad):
    model, steerer, *_ = tiny
    calls = {
        "steer": lambda: steerer.steer(bad).__enter__(),
        "generate": lambda: steerer.generate("the cat", strength=bad, max_new_tokens=2, verbose=False),
        "site dict": lambda: steerer.steer({steerer.sites[0]: bad}).__enter__(),
        "fold": lambda: steerer.fold(bad),
    }
    for name, call in calls.items():
        with pytest.raises(SteeringInputError, match="strength"):
            call()
        assert not model.hook_dict[steerer.sites[0]].fwd_hooks, f"{name} left a hook attached"


def test_nan_strength_is_refused_by_export(tiny, tmp_path):
    _, steerer, *_ = tiny
    with pytest.raises(SteeringInputError, match="finite"):
        steerer.export(tmp_path / "x", format="hf", strength=float("nan"))
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_nan_strength():
    from lineas_tl.cli_support import CLIError, parse_strength, parse_strengths

    with pytest.raises(CLIError, match="finite"):
        parse_strength("nan")
    with pytest.raises(CLIError, match="finite"):
        parse_strengths("0,0.5,inf")
    assert parse_strength("calibrated") == "calibrated" and parse_strength("0.5") == 0.5


@pytest.mark.parametrize("prompts", [["", "  ", "\n", ""], [], [[{"role": "user", "content": " "}]] * 4])
def test_empty_or_blank_prompt_sets_are_refused(tiny, prompts):
    _, steerer, src, _ = tiny
    with pytest.raises(SteeringInputError, match="source"):
        steerer.fit(prompts, src, method="mean_act", progress=False)


def test_one_string_instead_of_a_list_is_refused(tiny):
    _, steerer, _, tgt = tiny
    with pytest.raises(SteeringInputError, match="list of prompts"):
        steerer.fit("you are a stupid idiot", tgt, method="mean_act", progress=False)


def test_checks_on_their_own():
    assert check_strength(torch.tensor(0.5)) == 0.5
    assert check_number("steps", 3, minimum=1, integer=True) == 3
    for kwargs, value in [({"positive": True}, 0.0), ({"minimum": 0}, -1e-3), ({"integer": True}, 2.5), ({}, math.nan)]:
        with pytest.raises(SteeringInputError):
            check_number("x", value, **kwargs)
    check_prompts(torch.zeros(4, 3, dtype=torch.long), "source", minimum=4)  # token ids
    with pytest.raises(SteeringInputError, match="at least 4"):
        check_prompts(["a", "b"], "source", minimum=4, method="lineas")


# -------------------------------------------------------------------------------- property test
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-5, 5),
    st.sampled_from([0, 1, 0.5, -1, float("nan")]),
)
prompt = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "the cat", "you are a stupid idiot"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strength=st.one_of(numbers, st.text(max_size=5), st.none()), positions=st.sampled_from(["all", "generated", "x"]))
def test_any_strength_steers_or_is_refused_clearly(tiny, strength, positions):
    model, steerer, *_ = tiny
    try:
        out = steerer.generate("the cat sat", strength=strength, positions=positions, max_new_tokens=3,
                               verbose=False, do_sample=False, return_type="tokens")
    except (ValueError, TypeError) as err:
        assert raised_by_lineas_tl(err), f"error from outside the library: {err!r}"
        return
    assert out.shape[-1] > 3  # something was generated
    assert math.isfinite(float(strength))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["lineas", "linear_act", "mean_act"]),
    n=st.integers(0, 6),
    bad_prompt=st.booleans(),
    hparams=st.fixed_dictionaries(
        {},
        optional={"gamma": numbers, "lr": numbers, "steps": st.integers(-2, 3), "tol": numbers},
    ),
    sites=st.one_of(st.none(), st.sampled_from([["blocks.0.hook_mlp_out"], ["blocks.9.nope"], "hook_mlp_out$", []])),
    text=prompt,
)
def test_any_fit_gives_finite_maps_or_a_clear_error(tiny, method, n, bad_prompt, hparams, sites, text):
    from conftest import SOURCE_WORDS, TARGET_WORDS, make_prompts

    model, *_ = tiny
    if method != "lineas":
        hparams = {}
    src, tgt = make_prompts(SOURCE_WORDS, n, seed=3), make_prompts(TARGET_WORDS, max(n, 4), seed=4)
    if bad_prompt and src:
        src[0] = text
    try:
        steerer = HookedSteerer(model, sites).fit(src, tgt, method=method, progress=False, **hparams)
    except (ValueError, TypeError, KeyError, FloatingPointError) as err:
        assert raised_by_lineas_tl(err), f"error from outside the library: {err!r}"
        return
    for site, m in steerer.maps_.items():
        assert all(torch.isfinite(p).all() for p in m.parameters()), f"non-finite map at {site}"


def test_control_without_a_gate_is_refused_where_the_method_would_ignore_it(tiny):
    _, steerer, src, tgt = tiny
    with pytest.raises(SteeringInputError, match="gate=True"):
        steerer.fit(src, tgt, method="mean_act", control=["the weather is mild", "a train left the station"],
                    progress=False)
