"""Saving and loading steerers: exact round trip, clear mismatch errors, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import native

from lineas_tl import HookedSteerer
from lineas_tl import io as lio
from lineas_tl.io import SteererFormatError, SteererMismatchError, load_steerer


def _fit(model, text_sets, method: str = "lineas", **kw) -> HookedSteerer:
    if method == "lineas":
        kw = {"steps": 3, "lr": 0.05, "seed": 0, **kw}
    return HookedSteerer(model).fit(
        text_sets["source"][:8], text_sets["target"][:8], method=method, progress=False, **kw
    )


def _token_sets(n: int = 8, seed: int = 0) -> dict[str, list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return {
        "source": [torch.randint(0, 50, (6,), generator=g).tolist() for _ in range(n)],
        "target": [torch.randint(50, 100, (6,), generator=g).tolist() for _ in range(n)],
    }


def _hidden_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- round trip
def test_round_trip_is_exact(gpt2_model, text_sets, tmp_path):
    steerer = _fit(gpt2_model, text_sets)
    path = tmp_path / "detox"
    steerer.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["maps.safetensors", "steerer.json"]

    loaded = HookedSteerer.load(path, gpt2_model)
    assert list(loaded.maps_) == list(steerer.maps_)
    for site, m in steerer.maps_.items():
        got = loaded.maps_[site]
        assert torch.equal(got.weight, m.weight) and torch.equal(got.bias, m.bias)
        assert (got.feature_shape, got.feature_axis, got.kind) == (m.feature_shape, m.feature_axis, m.kind)
        assert not got.weight.requires_grad
    assert loaded.method_ == "lineas"
    assert loaded.hparams_ == steerer.hparams_ and loaded.hparams_given_ == {"steps": 3, "lr": 0.05, "seed": 0}
    assert loaded.hparams_["steps"] == 3 and loaded.hparams_["schedule"] in ("constant", "cosine")  # defaults too
    assert loaded.sites == steerer.sites and loaded.pooling == steerer.pooling
    assert loaded.history_["loss"] == steerer.history_["loss"]

    tokens = gpt2_model.to_tokens(["you are a stupid idiot"])
    with steerer.steer(0.7):
        before = gpt2_model(tokens)
    with loaded.steer(0.7):
        after = gpt2_model(tokens)
    assert torch.equal(before, after)


def test_support_range_and_front_maps_round_trip(native_model, tmp_path):
    """Linear-AcT's lo/hi and ActAdd's per-position rows survive a save; no range stays no range."""
    from safetensors.torch import load_file

    sets = _token_sets()
    cases = (("linear_act", {}), ("linear_act", {"support": None}), ("actadd", {"layer": 1, "coefficient": 2.0}))
    for method, kw in cases:
        steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method=method, progress=False, **kw)
        steerer.save(tmp_path / method)
        loaded = HookedSteerer.load(tmp_path / method, native_model)
        for site, m in steerer.maps_.items():
            got = loaded.maps_[site]
            assert (got.kind, got.n_front, got.has_range) == (m.kind, m.n_front, m.has_range)
            assert torch.equal(got.bias, m.bias)
            if m.has_range:
                assert torch.equal(got.lo, m.lo) and torch.equal(got.hi, m.hi)
        keys = set(load_file(str(tmp_path / method / "maps.safetensors")))
        assert any(k.endswith(".lo") for k in keys) == (method == "linear_act" and not kw)


def test_metadata_records_method_sites_version_and_fingerprint(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "steerer.json").read_text())
    assert meta["format_version"] == lio.FORMAT_VERSION
    assert meta["method"] == "linear_act"
    assert meta["sites"] == steerer.sites
    assert set(meta["maps"]) == set(steerer.maps_)
    assert meta["maps"][steerer.sites[0]] == {
        "feature_shape": [32],
        "feature_axis": 2,
        "kind": "affine",
        "dtype": "float32",
    }
    assert set(meta["model"]["fingerprint"]) == {"architecture", "weights", "weights_scheme"}
    assert meta["lineas_tl_version"]
    assert lio.read_metadata(tmp_path / "s")["method"] == "linear_act"


def test_non_json_hparams_are_saved_as_text(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.hparams_ = {"x": (1, 2), "t": torch.tensor([0.5]), "obj": object(), "nan": float("nan")}
    steerer.save(tmp_path / "s")
    loaded = HookedSteerer.load(tmp_path / "s", native_model)
    assert loaded.hparams_["x"] == [1, 2] and loaded.hparams_["t"] == [0.5]
    assert loaded.hparams_["obj"].startswith("<object") and loaded.hparams_["nan"] == "nan"


def test_save_replaces_an_existing_steerer(native_model, tmp_path):
    sets = _token_sets()
    a = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    b = HookedSteerer(native_model, sites=["blocks.0.hook_mlp_out"]).fit(
        sets["source"], sets["target"], method="linear_act", progress=False
    )
    a.save(tmp_path / "s")
    b.save(tmp_path / "s")
    assert list(HookedSteerer.load(tmp_path / "s", native_model).maps_) == ["blocks.0.mlp.hook_out"]
    assert _hidden_entries(tmp_path) == []  # no temp or backup directory left behind


def test_save_refuses_to_replace_unrelated_data(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a saved steerer"):
        steerer.save(tmp_path / "data")
    assert (tmp_path / "data" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        steerer.save(tmp_path / "file")


def test_unfitted_steerer_cannot_be_saved(native_model, tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        HookedSteerer(native_model).save(tmp_path / "s")


# ----------------------------------------------------------------------------- wrong model
def test_load_onto_model_missing_a_site_names_it(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    with pytest.raises(SteererMismatchError, match=r"blocks\.2\.ln2\.hook_out.*not hook points"):
        HookedSteerer.load(tmp_path / "s", native(n_layers=2))


def test_load_onto_model_of_other_width_names_site_and_shapes(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    with pytest.raises(
        SteererMismatchError, match=r"width mismatch at site 'blocks\.0\.ln2\.hook_out'.*\(32,\).*\(48,\)"
    ):
        HookedSteerer.load(tmp_path / "s", native(d_model=48))


def test_load_onto_other_architecture_same_widths_fails(gpt2_model, llama_model, text_sets, tmp_path):
    steerer = _fit(gpt2_model, text_sets, method="linear_act")
    steerer.save(tmp_path / "s")
    with pytest.raises(SteererMismatchError, match="another architecture"):
        HookedSteerer.load(tmp_path / "s", llama_model)
    with pytest.warns(UserWarning, match="another architecture"):
        loaded = load_steerer(HookedSteerer, tmp_path / "s", llama_model, strict=False)
    assert list(loaded.maps_) == list(steerer.maps_)


def test_load_onto_same_shape_other_weights_warns(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    with pytest.warns(UserWarning, match="same architecture but other weights"):
        HookedSteerer.load(tmp_path / "s", native(seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model it was fitted on: silent
        HookedSteerer.load(tmp_path / "s", native_model)


# ----------------------------------------------------------------------------- bad directories
def test_missing_path_and_incomplete_directories_are_clear_errors(native_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved steerer"):
        HookedSteerer.load(tmp_path / "nope", native_model)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "maps.safetensors").write_bytes(b"partial")
    with pytest.raises(SteererFormatError, match="missing steerer.json"):
        HookedSteerer.load(tmp_path / "half", native_model)


def test_corrupt_json_and_tampered_maps_are_detected(native_model, tmp_path):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    maps_file = tmp_path / "s" / "maps.safetensors"
    data = bytearray(maps_file.read_bytes())
    data[-1] ^= 0xFF
    maps_file.write_bytes(bytes(data))
    with pytest.raises(SteererFormatError, match="checksum differs"):
        HookedSteerer.load(tmp_path / "s", native_model)

    steerer.save(tmp_path / "s")
    meta_file = tmp_path / "s" / "steerer.json"
    meta_file.write_text(meta_file.read_text()[:50])
    with pytest.raises(SteererFormatError, match="steerer.json is corrupt"):
        HookedSteerer.load(tmp_path / "s", native_model)


def test_newer_format_asks_for_an_upgrade(native_model, tmp_path):
    sets = _token_sets()
    HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False).save(
        tmp_path / "s"
    )
    meta_file = tmp_path / "s" / "steerer.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = lio.FORMAT_VERSION + 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SteererFormatError, match="upgrade lineas-tl"):
        HookedSteerer.load(tmp_path / "s", native_model)


def test_a_steerer_saved_by_the_first_release_still_loads(native_model, tmp_path):
    """Format 1 as the first release wrote it: no calibration key, no ranges, no front maps, and
    the old 100-step hyper-parameters."""
    sets = _token_sets()
    s = HookedSteerer(native_model).fit(sets["source"], sets["target"], steps=3, progress=False, warn=False)
    s.save(tmp_path / "s")
    meta_file = tmp_path / "s" / "steerer.json"
    meta = json.loads(meta_file.read_text())
    del meta["calibration"]
    for key in ("chat_pool", "hparams_given", "gate"):  # added by later formats
        meta.pop(key, None)
    meta["model"].pop("name", None)
    meta["format_version"] = 1
    meta["hparams"] = {"steps": 100, "lr": 0.001}
    meta["history"] = {"loss": [1.0, 0.5]}
    meta_file.write_text(json.dumps(meta))
    loaded = HookedSteerer.load(tmp_path / "s", native_model)
    assert loaded.calibrated_strength_ is None and loaded.hparams_ == {"steps": 100, "lr": 0.001}
    assert loaded.hparams_given_ == {"steps": 100, "lr": 0.001} and loaded.chat_pool == "user"
    for site, m in s.maps_.items():
        assert torch.equal(loaded.maps_[site].weight, m.weight) and loaded.maps_[site].lo is None


# ----------------------------------------------------------------------------- interrupted saves
@pytest.mark.parametrize("stage", ["maps", "json"])
def test_interrupted_save_leaves_nothing_loadable(native_model, tmp_path, monkeypatch, stage):
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    def broken_dump(obj, fh, **kw):
        fh.write('{"format": "lineas-tl steerer", "form')
        raise OSError("disk full")

    if stage == "maps":
        monkeypatch.setattr(lio, "save_file", broken_save_file)
        expected: type[BaseException] = KeyboardInterrupt
    else:
        monkeypatch.setattr(lio.json, "dump", broken_dump)
        expected = OSError
    with pytest.raises(expected):
        steerer.save(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert _hidden_entries(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        HookedSteerer.load(tmp_path / "s", native_model)


def test_interrupted_overwrite_keeps_the_previous_steerer(native_model, tmp_path, monkeypatch):
    sets = _token_sets()
    old = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    old.save(tmp_path / "s")
    new = HookedSteerer(native_model, sites=["blocks.1.hook_mlp_out"]).fit(
        sets["source"], sets["target"], method="linear_act", progress=False
    )

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lio, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "s")
    monkeypatch.undo()
    loaded = HookedSteerer.load(tmp_path / "s", native_model)
    assert list(loaded.maps_) == list(old.maps_)
    assert _hidden_entries(tmp_path) == []


def test_failed_swap_restores_the_previous_steerer(native_model, tmp_path, monkeypatch):
    sets = _token_sets()
    old = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    old.save(tmp_path / "s")
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old moved aside; now moving the new one in fails
            raise OSError("interrupted")
        return real_rename(src, dst)

    monkeypatch.setattr(lio.os, "rename", rename)
    with pytest.raises(OSError, match="interrupted"):
        old.save(tmp_path / "s")
    monkeypatch.undo()
    assert list(HookedSteerer.load(tmp_path / "s", native_model).maps_) == list(old.maps_)
    assert _hidden_entries(tmp_path) == []


def test_save_killed_mid_way_leaves_no_steerer_at_the_path(tmp_path):
    """A real SIGKILL while the maps are being written: the path never holds a steerer."""
    script = textwrap.dedent(
        f"""
        import time
        from types import SimpleNamespace
        from lineas_tl import io as lio
        from lineas_tl.maps import AffineMap

        sites = ["blocks.0.attn.hook_out", "blocks.0.mlp.hook_out"]
        steerer = SimpleNamespace(  # what save_steerer reads; no model needed in this process
            maps_={{s: AffineMap((32,)) for s in sites}}, method_="manual", hparams_={{}}, history_={{}},
            pooling="mean", sites=sites, model=object(),
        )
        lio.model_fingerprint = lambda model: {{"architecture": "a", "weights": "w"}}
        real = lio.save_file

        def slow_save(tensors, filename, metadata=None):
            open(filename, "wb").write(b"partial")
            print("writing", flush=True)
            time.sleep(60)
            real(tensors, filename, metadata=metadata)

        lio.save_file = slow_save
        lio.save_steerer(steerer, {str(tmp_path / "s")!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "s").exists()
    leftovers = [tmp_path / name for name in _hidden_entries(tmp_path)]
    assert leftovers and all(p.name.startswith(".s.tmp-") for p in leftovers)  # hidden, never at the path
    model = native()
    with pytest.raises(FileNotFoundError):
        HookedSteerer.load(tmp_path / "s", model)
    with pytest.raises(SteererFormatError):
        HookedSteerer.load(leftovers[0], model)


def test_an_old_weights_fingerprint_is_not_compared(native_model, tmp_path):
    """Format-3 weights fingerprints summed floats (thread-dependent): loading one never warns about weights."""
    sets = _token_sets()
    steerer = HookedSteerer(native_model).fit(sets["source"], sets["target"], method="linear_act", progress=False)
    steerer.save(tmp_path / "s")
    meta_file = tmp_path / "s" / "steerer.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 3
    meta["model"]["fingerprint"] = {"architecture": meta["model"]["fingerprint"]["architecture"], "weights": "0123456789abcdef"}
    meta_file.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookedSteerer.load(tmp_path / "s", native_model)
