"""What every baseline shares: the registry, and maps that steer, generate and save like LinEAS's.

Each method's own numbers are pinned in ``test_methods_<method>.py``.
"""

from __future__ import annotations

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.methods import METHODS

N_FIT = 32


def fit_sets(text_sets: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    return text_sets["source"][:N_FIT], text_sets["target"][:N_FIT]


def test_registry_has_every_method() -> None:
    assert {"lineas", "linear_act", "mean_act", "caa", "actadd", "iti"} <= set(METHODS)


KINDS = {"mean_act": "shift", "caa": "shift", "linear_act": "affine", "actadd": "front", "iti": "shift"}


@pytest.mark.parametrize("method", sorted(KINDS))
def test_baselines_steer_generate_and_round_trip(llama_model, text_sets, tmp_path, method: str) -> None:
    source, target = fit_sets(text_sets)
    steerer = HookedSteerer(llama_model).fit(source, target, method=method, progress=False)
    tokens = llama_model.to_tokens("the cat sat on the mat")
    with torch.no_grad():
        base = llama_model(tokens)
        with steerer.steer(strength=0.0):
            torch.testing.assert_close(llama_model(tokens), base, atol=0, rtol=0)
        with steerer.steer(strength=1.0):
            steered = llama_model(tokens)
    assert not torch.allclose(steered, base)
    text = steerer.generate("the cat", strength=1.0, max_new_tokens=4, return_type="continuation")
    assert isinstance(text, str)
    steerer.save(tmp_path / "s")
    loaded = HookedSteerer.load(tmp_path / "s", llama_model)
    assert loaded.method_ == method and list(loaded.maps_) == list(steerer.maps_)
    for site, m in steerer.maps_.items():
        torch.testing.assert_close(loaded.maps_[site].bias, m.bias, atol=0, rtol=0)
        assert loaded.maps_[site].kind == KINDS[method]
    with torch.no_grad(), loaded.steer(strength=1.0):
        torch.testing.assert_close(llama_model(tokens), steered)
