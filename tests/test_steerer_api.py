"""The steerer's conventions: a TransformerLens-style hooks() context, a not-fitted error, every
hyper-parameter recorded, and the settings a saved steerer needs to behave the same after loading."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import lineas_tl
from lineas_tl import HookedSteerer, NotFittedError


def _sets(n: int = 8, seed: int = 0) -> dict[str, list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return {
        "source": [torch.randint(0, 50, (6,), generator=g).tolist() for _ in range(n)],
        "target": [torch.randint(50, 100, (6,), generator=g).tolist() for _ in range(n)],
    }


@pytest.fixture
def fitted(native_model):
    sets = _sets()
    return HookedSteerer(native_model).fit(sets["source"], sets["target"], method="mean_act", progress=False)


def test_fitted_attributes_do_not_exist_before_fit(native_model):
    steerer = HookedSteerer(native_model)
    for name in ("maps_", "method_", "hparams_", "history_", "calibrated_strength_", "calibration_"):
        assert not hasattr(steerer, name)
        with pytest.raises(NotFittedError, match="not fitted"):
            getattr(steerer, name)
    for call in (steerer.support, lambda: steerer.fwd_hooks(1.0), lambda: steerer.generate([[1, 2]])):
        with pytest.raises(NotFittedError):
            call()
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    assert issubclass(NotFittedError, RuntimeError)  # what earlier releases raised
    assert "not fitted" in repr(steerer)
    with pytest.raises(AttributeError) as err:
        steerer.no_such_thing  # noqa: B018
    assert not isinstance(err.value, NotFittedError)


def test_hooks_is_a_context_manager_like_transformer_lens(fitted, native_model):
    tokens = torch.tensor([[1, 5, 60, 7]])
    plain = native_model(tokens)
    with fitted.steer(0.5):
        expected = native_model(tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with fitted.hooks(0.5) as entered:
            got = native_model(tokens)
        assert entered is native_model
        with native_model.hooks(fwd_hooks=fitted.fwd_hooks(0.5)):
            assert torch.equal(native_model(tokens), expected)
    assert torch.equal(got, expected) and not torch.equal(got, plain)
    assert torch.equal(native_model(tokens), plain)  # removed on exit
    with pytest.raises(KeyError), fitted.hooks(1.0):
        raise KeyError("boom")
    assert torch.equal(native_model(tokens), plain)  # removed on error too


def test_hooks_as_a_list_still_works_with_a_deprecation_warning(fitted, native_model):
    tokens = torch.tensor([[1, 5, 60, 7]])
    with fitted.steer(0.5):
        expected = native_model(tokens)
    with pytest.warns(DeprecationWarning, match="fwd_hooks"):
        pairs = list(fitted.hooks(0.5))
    assert [s for s, _ in pairs] == [s for s, _ in fitted.fwd_hooks(0.5)]
    with pytest.warns(DeprecationWarning):
        with native_model.hooks(fwd_hooks=fitted.hooks(0.5)):
            assert torch.equal(native_model(tokens), expected)
    with pytest.warns(DeprecationWarning):
        assert fitted.hooks(0.5)[0][0] == pairs[0][0]


def test_hparams_record_every_setting_defaults_included(native_model):
    sets = _sets()
    lineas = HookedSteerer(native_model).fit(
        sets["source"], sets["target"], steps=4, seed=0, progress=False, warn=False
    )
    hp = lineas.hparams_
    assert hp["steps"] == 4 and hp["preset"] == "auto" and lineas.history_["preset"] == "paper_short"
    for key in ("lr", "schedule", "standardize", "init", "early_stop", "gamma", "optimizer", "tol", "patience"):
        assert hp[key] is not None, key
    assert lineas.hparams_given_ == {"steps": 4, "seed": 0, "warn": False}
    linear = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    assert linear.hparams_ == {"sequential": True, "support": "q_0_100"}
    caa = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="caa", progress=False)
    assert caa.hparams_ == {}


def test_save_records_resolved_hparams_chat_pool_and_model_name(native_model, tmp_path):
    from lineas_tl.io import FORMAT_VERSION
    from lineas_tl.models import NAME_ATTR

    sets = _sets()
    setattr(native_model, NAME_ATTR, "my-model")
    steerer = HookedSteerer(native_model, pooling="last", pool_bos=True, chat_pool="content")
    steerer.fit(sets["source"], sets["target"], method="linear_act", progress=False, support=None)
    steerer.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "steerer.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION >= 2
    assert meta["hparams"] == {"sequential": True, "support": None} and meta["hparams_given"] == {"support": None}
    assert (meta["pooling"], meta["pool_bos"], meta["chat_pool"]) == ("last", True, "content")
    assert meta["model"]["name"] == "my-model"
    loaded = HookedSteerer.load(tmp_path / "s", native_model)
    assert (loaded.pooling, loaded.pool_bos, loaded.chat_pool) == ("last", True, "content")
    assert loaded.runner.chat_pool == "content" and loaded.runner.pool_bos
    assert loaded.hparams_ == steerer.hparams_ and loaded.hparams_given_ == {"support": None}
    assert loaded.calibrated_strength_ is None


def test_top_level_exports_what_the_quick_start_imports():
    from lineas_tl import NotConvergedWarning, SteeringInputError, get_concept, models  # noqa: F401

    assert callable(models.load) and callable(get_concept)
    assert issubclass(NotConvergedWarning, Warning) and issubclass(SteeringInputError, ValueError)
    assert "HookedPipeline" in dir(lineas_tl)
    with pytest.raises(AttributeError):
        lineas_tl.no_such_name  # noqa: B018


def test_generate_defaults_are_documented_where_they_differ_from_the_bridge():
    doc = HookedSteerer.generate.__doc__ or ""
    assert "greedy" in doc and 'return_type="continuation"' in doc and "do_sample=True" in doc
