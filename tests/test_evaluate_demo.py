"""The main job (``lineas-tl demo``) end to end on a tiny model, with a tiny configuration."""

from __future__ import annotations

import pandas as pd

from lineas_tl.demo import DemoConfig, main
from lineas_tl.evaluate import PAPER


def test_demo_writes_the_frontier_and_results(gpt2_dir, tmp_path, capsys) -> None:
    cfg = DemoConfig(
        steps=2, n_fit=8, n_eval=3, n_target_eval=2, n_in_sample=2, n_reference=3, reference_words=20,
        generation=PAPER.with_(max_new_tokens=3, n_samples=1), strengths=(0.0, 1.0), extra_strengths=(2.0,),
    )  # fmt: skip
    table = main(str(gpt2_dir), "sentiment", out=tmp_path, methods=("lineas", "iti"), config=cfg)
    printed = capsys.readouterr().out
    assert "Frontier" in printed and "≤ +5% ppl" in printed and "Ceiling" in printed
    assert "At the calibrated strength" in printed
    for name in ("comparison.csv", "frontier.csv", "tradeoff.png", "RESULTS.md"):
        assert (tmp_path / name).is_file()
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Frontier" in report and "## At the calibrated strength" in report
    assert "top_p=0.3" in report and "ceiling" in report
    assert "LinEAS fit: 2 steps, **did not converge** (stop: steps)" in report  # 2 steps cannot converge
    # LinEAS gets the extra strength 2, ITI does not
    assert sorted(table.loc[table["method"] == "lineas", "strength"]) == [0.0, 1.0, 2.0]
    assert sorted(table.loc[table["method"] == "iti", "strength"]) == [0.0, 1.0]
    assert len(pd.read_csv(tmp_path / "frontier.csv")) == 2 * 3


def test_demo_sizes() -> None:
    quick, default, full = DemoConfig.quick(), DemoConfig(), DemoConfig.full()
    assert len(default.strengths) == 11 and default.generation.top_p == 0.3 and default.generation.n_samples >= 2
    assert quick.n_eval < default.n_eval < full.n_eval and full.n_in_sample > 0
