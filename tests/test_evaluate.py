"""The end-to-end method comparison (``compare``) and its plot, on tiny offline models."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import SOURCE_WORDS, TARGET_WORDS, make_prompts

from lineas_tl.evaluate import (
    CEILING,
    COLUMNS,
    DEFAULT_STRENGTHS,
    REFERENCE_TEXTS,
    GenerationConfig,
    compare,
    concept_score,
    continuations,
    plot_tradeoff,
    strength_grid,
    toxicity_scorer,
)
from lineas_tl.validate import SteeringInputError


def vowel_scorer(texts):
    """A toy judge in [0.25, 0.75] that reacts to most changes of the text (never 0, so the scores
    relative to the unsteered model are defined whatever a random tiny model generates)."""
    return [0.25 + 0.5 * sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts]


def test_default_toxicity_scorer_works_offline() -> None:
    pytest.importorskip("profanity_check")
    clean, rude = toxicity_scorer(["have a lovely day my friend", "shut up you stupid fucking idiot"])
    assert 0 <= clean < 0.5 < rude <= 1
    assert toxicity_scorer([]) == []


def test_strength_grid() -> None:
    assert len(DEFAULT_STRENGTHS) == 11 and DEFAULT_STRENGTHS[0] == 0 and DEFAULT_STRENGTHS[-1] == 1
    assert strength_grid("iti", (0.5, 1.0), (2.0,)) == [0.0, 0.5, 1.0]
    assert strength_grid("lineas", (1.0, 0.5, 0.5), (2.0, 1.5)) == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_compare_end_to_end(gpt2_model, text_sets, tmp_path) -> None:
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    held_out = make_prompts(SOURCE_WORDS, 4, seed=7)
    held_out_target = make_prompts(TARGET_WORDS, 3, seed=8)
    methods = ["lineas", "linear_act", "mean_act", "caa", "iti", "actadd"]
    generation = GenerationConfig(max_new_tokens=4, n_samples=2)
    table = compare(
        gpt2_model, source, target, methods=methods, strengths=(0.5, 1.0), extra_strengths=(2.0,),
        eval_prompts=held_out, target_eval_prompts=held_out_target, scorer=vowel_scorer,
        reference_texts=REFERENCE_TEXTS[:4], method_kwargs={"lineas": {"steps": 3}}, generation=generation,
        n_in_sample=3, out_dir=tmp_path, progress=False,
    )  # fmt: skip

    for name in ("comparison.csv", "frontier.csv"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file
    on_disk = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table.columns) == COLUMNS and list(on_disk.columns) == COLUMNS
    # 0, 0.5, 1 per method, plus 2 for the three distribution-matching methods, plus the ceiling
    assert len(table) == len(on_disk) == 3 * len(methods) + 3 + 1
    steered = table[table["method"] != CEILING]
    assert steered[["score_in", "score_out", "perplexity", "gap"]].notna().all().all()
    for side in ("in", "out"):
        assert (steered[f"score_{side}_lo"] <= steered[f"score_{side}"]).all()
        assert (steered[f"score_{side}"] <= steered[f"score_{side}_hi"]).all()
        assert steered[f"score_{side}"].between(0, 1).all()

    # strength 0 is the unsteered model, evaluated once, with the same draws as a direct call
    zero = steered[steered["strength"] == 0]
    assert zero[["score_in", "score_out", "perplexity"]].nunique().eq(1).all()
    direct = continuations(gpt2_model, held_out, config=generation)
    assert zero["score_out"].iloc[0] == pytest.approx(concept_score(direct, vowel_scorer, per_prompt=2).mean)
    assert zero["sample"].iloc[0] == direct[0]
    assert zero["ppl_increase"].eq(0).all()
    # the ceiling: the unsteered model on the target prompts
    ceiling = table[table["method"] == CEILING].iloc[0]
    assert math.isnan(ceiling["strength"]) and ceiling["perplexity"] == zero["perplexity"].iloc[0]
    want = concept_score(continuations(gpt2_model, target[:3], config=generation), vowel_scorer, per_prompt=2)
    assert ceiling["score_in"] == pytest.approx(want.mean)
    want = concept_score(continuations(gpt2_model, held_out_target, config=generation), vowel_scorer, per_prompt=2)
    assert ceiling["score_out"] == pytest.approx(want.mean)
    # steering moves something: every method changes the perplexity at full strength
    full = steered[steered["strength"] == 1.0].set_index("method")["perplexity"]
    assert (full != zero["perplexity"].iloc[0]).all()

    frontier = table.attrs["frontier"]
    assert table.attrs["frontier_column"] == "score_out"
    assert set(frontier["method"]) == set(methods) and len(frontier) == 3 * len(methods)
    assert (frontier["perplexity"] <= frontier["max_perplexity"] * (1 + 1e-9)).all()
    assert set(table.attrs["histories"]) == set(methods)
    assert table.attrs["protocol"]["n_in_sample"] == 3 and "top_p=0.3" in table.attrs["protocol"]["generation"]


def test_compare_skips_scoring_beyond_the_perplexity_cap(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:6], text_sets["target"][:6]
    table = compare(
        gpt2_model, source, target, methods=["mean_act"], strengths=(1.0,), extra_strengths=(50.0,),
        scorer=vowel_scorer, reference_texts=REFERENCE_TEXTS[:3], generation=GenerationConfig.greedy(3),
        max_scored_ppl_increase=0.0, sites="outputs", progress=False,
    )  # fmt: skip  (at the outputs, strength 50 is sure to raise the perplexity)
    rows = table[table["method"] == "mean_act"].set_index("strength")
    assert rows.loc[0.0, "scored"] and rows.loc[0.0, "score_in"] == rows.loc[0.0, "score_in"]
    beyond = rows[rows["perplexity"] > rows.loc[0.0, "perplexity"]]
    assert len(beyond) >= 1 and not beyond["scored"].any() and beyond["score_in"].isna().all()


def test_compare_checks_its_inputs(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    with pytest.raises(ValueError, match="unknown methods"):
        compare(gpt2_model, source, target, methods=["nope"], scorer=vowel_scorer)
    with pytest.raises(ValueError, match="disjoint"):
        compare(gpt2_model, source, target, eval_prompts=[source[0], "a new prompt"], scorer=vowel_scorer)
    with pytest.raises(ValueError, match="not compared"):
        compare(gpt2_model, source, target, methods=["mean_act"], method_kwargs={"lineas": {}}, scorer=vowel_scorer)
    with pytest.raises(ValueError, match="non-negative"):
        compare(gpt2_model, source, target, methods=["mean_act"], strengths=(-1.0,), scorer=vowel_scorer)


def test_compare_gated_variants_are_rows_of_their_own(gpt2_model, text_sets) -> None:
    """"<method>+gate" fits the method with control= and gate=True; its grid is the method's."""
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    control = ["the weather today is warm", "a train left the station", "the museum opened at nine",
               "she read a book in the park", "the river runs to the sea", "we walked along the old road"]  # fmt: skip
    kw = dict(strengths=(1.0,), extra_strengths=(2.0,), scorer=vowel_scorer, reference_texts=REFERENCE_TEXTS[:3],
              generation=GenerationConfig.greedy(3), progress=False)  # fmt: skip
    table = compare(gpt2_model, source, target, methods=["mean_act", "mean_act+gate"], control=control, **kw)
    rows = table[table["method"] != CEILING]
    assert sorted(set(zip(rows["method"], rows["strength"]))) == [
        ("mean_act", 0.0), ("mean_act", 1.0), ("mean_act", 2.0),
        ("mean_act+gate", 0.0), ("mean_act+gate", 1.0), ("mean_act+gate", 2.0),
    ]  # fmt: skip
    assert table.attrs["histories"]["mean_act+gate"]["gate"]["driver"] == "prompt"
    assert "gate" not in table.attrs["histories"]["mean_act"] and table.attrs["protocol"]["n_control"] == 6
    steered = rows[rows["strength"] == 1.0].set_index("method")["perplexity"]
    assert steered["mean_act+gate"] != steered["mean_act"]
    with pytest.raises(SteeringInputError, match="control"):
        compare(gpt2_model, source, target, methods=["iti+gate"], **kw)
    with pytest.raises(ValueError, match="evaluation text"):
        compare(gpt2_model, source, target, methods=["iti+gate"], control=[REFERENCE_TEXTS[0]], **kw)


def test_compare_without_held_out_prompts_warns(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:6], text_sets["target"][:6]
    with pytest.warns(UserWarning, match="in-sample"):
        table = compare(
            gpt2_model, source, target, methods=["mean_act"], strengths=(1.0,), scorer=vowel_scorer,
            reference_texts=REFERENCE_TEXTS[:3], generation=GenerationConfig.greedy(3), progress=False,
        )  # fmt: skip
    assert table["score_out"].isna().all() and table["score_in"].notna().all()
    assert table.attrs["frontier_column"] == "score_in"


def test_plot_tradeoff_from_a_table(tmp_path) -> None:
    rows = [
        {"method": m, "strength": s, "score_in": 0.5 - s * k, "score_out": 0.5 - s * k / 2,
         "score_out_lo": 0.45 - s * k / 2, "score_out_hi": 0.55 - s * k / 2, "perplexity": 10 + s * k * 10}
        for m, k in (("lineas", 0.3), ("iti", 2.0))
        for s in (0.0, 0.5, 1.0)
    ]  # fmt: skip
    rows.append({"method": CEILING, "strength": math.nan, "score_in": 0.2, "score_out": 0.25, "perplexity": 10})
    path = plot_tradeoff(pd.DataFrame(rows), tmp_path / "sub" / "t.png", title="toy")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    unclipped = plot_tradeoff(pd.DataFrame(rows), tmp_path / "all.png", clip=None)
    assert unclipped.is_file()


def test_sweep_order_is_coarse_to_fine_in_rounds() -> None:
    from lineas_tl.evaluate import coarse_to_fine, sweep_jobs

    order = coarse_to_fine(DEFAULT_STRENGTHS + (1.5, 2.0))
    assert order == [1.0, 0.5, 0.2, 0.7, 0.1, 0.3, 0.4, 0.6, 0.8, 0.9, 1.5, 2.0]
    jobs = sweep_jobs(["iti", "lineas"], {"iti": [0.0, 0.5, 1.0], "lineas": [0.0, 0.5, 1.0, 2.0]})
    assert jobs == [("iti", 1.0), ("lineas", 1.0), ("iti", 0.5), ("lineas", 0.5), ("lineas", 2.0)]


def test_compare_cut_short_by_its_time_budget_keeps_a_consistent_table(gpt2_model, text_sets, tmp_path) -> None:
    source, target = text_sets["source"][:6], text_sets["target"][:6]
    table = compare(
        gpt2_model, source, target, methods=["mean_act", "caa"], strengths=DEFAULT_STRENGTHS, scorer=vowel_scorer,
        eval_prompts=make_prompts(SOURCE_WORDS, 2, seed=7), reference_texts=REFERENCE_TEXTS[:2],
        generation=GenerationConfig.greedy(2), max_seconds=1e-9, out_dir=tmp_path, progress=False,
    )  # fmt: skip
    p = table.attrs["protocol"]
    # the fits alone spent the budget: only the unsteered rows (and the ceiling) are there
    assert not p["complete"] and p["rows_done"] == 2 and p["rows_planned"] == (11 + 4) + 11  # mean_act goes past 1
    rows = table[table["method"] != CEILING]
    assert sorted(zip(rows["method"], rows["strength"])) == [("caa", 0.0), ("mean_act", 0.0)]
    assert table.attrs["frontier"]["strength"].eq(0).all()
    assert len(pd.read_csv(tmp_path / "comparison.csv")) == len(table)


def test_plot_leaves_out_an_empty_panel(tmp_path) -> None:
    rows = [{"method": "lineas", "strength": s, "score_in": math.nan, "score_out": 0.5 - s / 4, "perplexity": 10 + s}
            for s in (0.0, 1.0)]  # fmt: skip
    assert plot_tradeoff(pd.DataFrame(rows), tmp_path / "one.png").is_file()
    with pytest.raises(ValueError, match="no scores"):
        plot_tradeoff(pd.DataFrame(rows).assign(score_out=math.nan), tmp_path / "none.png")
