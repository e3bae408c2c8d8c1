"""The diffusion results command, in its quick form (the digits test recipe, shared cache)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lineas_tl.diffusion.results import METRICS, QUICK, main, ssim

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ssim_by_hand():
    rng = np.random.default_rng(0)
    a = rng.random((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-9)
    # one 3x3 window of constants: ((2xy + c1)(c2)) / ((x^2 + y^2 + c1)(c2)) with x = 0.2, y = 0.6
    x, y = np.full((1, 3, 3, 1), 0.2), np.full((1, 3, 3, 1), 0.6)
    c1 = 0.01**2
    assert ssim(x, y)[0] == pytest.approx((2 * 0.12 + c1) / (0.04 + 0.36 + c1))
    assert ssim(a, 1 - a).mean() < ssim(a, np.clip(a + 0.05, 0, 1)).mean()


@pytest.mark.slow
def test_quick_results_are_written_and_sensible(tmp_path):
    out = tmp_path / "diffusion"
    main(["--out", str(out), "--quick"])
    assert {p.name for p in out.iterdir()} == {"RESULTS.md", "results.csv", "removal_grid.png", "induction_grid.png"}
    table = pd.read_csv(out / "results.csv").set_index("method")
    gated = [f"{m}+gate" for m in QUICK.gated]
    assert list(table.index) == ["unsteered", *QUICK.methods, *gated]
    assert table.loc[gated, "share_induced"].isna().all()  # a gate opens on the concept: no inverse measured
    for key in METRICS:
        rows = table[key].notna()
        assert (table.loc[rows, f"{key}_lo"] <= table.loc[rows, key] + 1e-9).all()
        assert (table.loc[rows, key] <= table.loc[rows, f"{key}_hi"] + 1e-9).all()
    plain = table.loc["unsteered"]
    assert plain["share_removed"] > 0.8 and plain["ssim_other"] == pytest.approx(1.0)
    for method in ("lineas", "mean_act"):  # remove red on held-out prompts, induce it with the inverse
        assert table.loc[method, "share_removed"] < 0.6 * plain["share_removed"]
        assert table.loc[method, "share_induced"] > plain["share_induced"] + 0.2
        assert 0.5 < table.loc[method, "ssim_other"] < 1.0
    grid = Image.open(out / "removal_grid.png")
    assert grid.size[1] == 14 + 56 * (1 + len(QUICK.methods) + len(gated))  # a row per method, unsteered first
    assert Image.open(out / "induction_grid.png").size[1] == 14 + 56 * (1 + len(QUICK.methods))
    text = (out / "RESULTS.md").read_text()
    assert "python -m lineas_tl.diffusion.results --out" in text and "--quick" in text
    assert "ITI-c is not in this comparison" in text
