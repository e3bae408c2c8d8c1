"""Calibrated strength: the search, the budget on the calibration texts, save/load, "calibrated"."""

from __future__ import annotations

import math

import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.calibrate import Calibration, search_strength
from lineas_tl.evaluate import REFERENCE_TEXTS, perplexity
from lineas_tl.io import SteererFormatError


def test_search_finds_the_first_crossing_by_grid_then_bisection() -> None:
    # monotone: value = 10 + 10 s, limit 15 -> crossing at s = 0.5
    strength, value, seen = search_strength(lambda s: 10 + 10 * s, 15.0, grid=4, bisect_steps=3)
    # 0.5 is exactly at the limit (inside); 0.75 is over it; bisection never finds a point inside again
    assert [s for s, _ in seen] == [0.25, 0.5, 0.75, 0.625, 0.5625, 0.53125]
    assert strength == 0.5 and value == 15.0
    strength, _, seen = search_strength(lambda s: 10 + 10 * s, 14.0, grid=4, bisect_steps=3)
    # grid 0.25 (12.5 ok), 0.5 (15 > 14) -> bisect 0.375 (13.75 ok), 0.4375 (14.375 no), 0.40625 (14.06 no)
    assert [s for s, _ in seen] == [0.25, 0.5, 0.375, 0.4375, 0.40625] and strength == 0.375
    # non-monotone: over the budget at 0.5, back under at 0.75 and 1: the first crossing wins
    bumpy = {0.25: 11.0, 0.5: 30.0, 0.375: 20.0, 0.3125: 12.0, 0.75: 11.0, 1.0: 11.0}
    strength, value, _ = search_strength(bumpy.__getitem__, 14.0, grid=4, bisect_steps=2)
    assert strength == 0.3125 and value == 12.0
    # never over the budget: the top of the search; NaN counts as over it
    assert search_strength(lambda s: 10.0, 11.0, max_strength=2.0, grid=2)[0] == 2.0
    assert search_strength(lambda s: math.nan, 11.0, grid=2, bisect_steps=1)[0] == 0.0


@pytest.fixture
def fitted(llama_model, text_sets) -> HookedSteerer:
    source, target = text_sets["source"][:16], text_sets["target"][:16]
    return HookedSteerer(llama_model, "outputs").fit(source, target, method="mean_act", progress=False)


def test_calibrated_strength_keeps_perplexity_within_the_budget(fitted) -> None:
    texts = list(REFERENCE_TEXTS[:6])
    base = perplexity(fitted.model, texts)
    full = perplexity(fitted.model, texts, steerer=fitted, strength=1.0)
    budget = 0.5 * (full / base - 1)  # half the cost of the full map: the answer is strictly inside (0, 1)
    assert fitted.calibrate(texts, max_ppl_increase=budget) is fitted
    rec = fitted.calibration_
    assert isinstance(rec, Calibration) and fitted.calibrated_strength_ == rec.strength
    assert 0 < rec.strength < 1 and rec.max_ppl_increase == budget and rec.n_texts == 6
    assert rec.base_perplexity == pytest.approx(base)
    measured = perplexity(fitted.model, texts, steerer=fitted, strength=rec.strength)
    assert measured == pytest.approx(rec.perplexity) and measured <= (1 + budget) * base * (1 + 1e-9)
    # the next grid step or bisection point above it was over the budget
    over = [p for s, p in rec.evaluated if s > rec.strength]
    assert over and min(over) > (1 + budget) * base
    # a looser budget never gives a weaker strength
    looser = fitted.calibrate(texts, max_ppl_increase=2 * budget).calibrated_strength_
    assert looser >= rec.strength


def test_calibrated_strength_is_used_by_steer_generate_and_fold(fitted) -> None:
    tokens = fitted.model.to_tokens("the cat sat on the mat")
    with pytest.raises(ValueError, match="calibrate"):
        fitted.hooks("calibrated")
    fitted.calibrate(list(REFERENCE_TEXTS[:4]), max_ppl_increase=0.02)
    s = fitted.calibrated_strength_
    with torch.no_grad():
        with fitted.steer("calibrated"):
            a = fitted.model(tokens)
        with fitted.steer(s):
            b = fitted.model(tokens)
        with fitted.fold("calibrated", check=False):
            c = fitted.model(tokens)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-4)
    kw = {"max_new_tokens": 4, "do_sample": False}
    assert fitted.generate("the dog", "calibrated", **kw) == fitted.generate("the dog", s, **kw)
    with pytest.raises(ValueError, match="inverse"):
        fitted.hooks("calibrated", inverse=True)
    with pytest.raises(ValueError, match="not 'strong'"):
        fitted.hooks("strong")  # type: ignore[arg-type]


def test_calibration_round_trips_through_save_and_load(fitted, tmp_path) -> None:
    fitted.calibrate(list(REFERENCE_TEXTS[:4]), max_ppl_increase=0.03, grid=4, bisect_steps=2)
    fitted.save(tmp_path / "st")
    loaded = HookedSteerer.load(tmp_path / "st", fitted.model)
    assert loaded.calibrated_strength_ == fitted.calibrated_strength_
    assert loaded.calibration_ == fitted.calibration_
    # an uncalibrated steerer saves and loads without one; a refit forgets the old calibration
    fitted.fit(["the cat", "a dog"], ["a lovely day", "my dear friend"], method="mean_act", progress=False)
    assert fitted.calibrated_strength_ is None
    fitted.save(tmp_path / "plain")
    assert HookedSteerer.load(tmp_path / "plain", fitted.model).calibrated_strength_ is None


def test_calibrate_checks_its_inputs(fitted, tmp_path) -> None:
    with pytest.raises(ValueError, match="max_ppl_increase"):
        fitted.calibrate(["a text"], max_ppl_increase=-0.1)
    with pytest.raises(ValueError, match="no calibration texts"):
        fitted.calibrate([])
    with pytest.raises(TypeError, match="single string"):
        fitted.calibrate("one text")
    with pytest.raises(ValueError, match="max_strength"):
        fitted.calibrate(["a text"], max_strength=0)
    with pytest.raises(ValueError, match="malformed"):
        Calibration.from_dict({"strength": 0.5})
    fitted.calibrate(list(REFERENCE_TEXTS[:2]), grid=2, bisect_steps=0)
    fitted.save(tmp_path / "st")
    meta = (tmp_path / "st" / "steerer.json").read_text().replace('"max_strength"', '"max_strenth"')
    (tmp_path / "st" / "steerer.json").write_text(meta)
    with pytest.raises(SteererFormatError, match="calibrat"):
        HookedSteerer.load(tmp_path / "st", fitted.model)
