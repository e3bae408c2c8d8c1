"""Concept score, perplexity and the end-to-end method comparison, on tiny offline models."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch
from conftest import SOURCE_WORDS, make_prompts

from lineas_tl import HookedSteerer
from lineas_tl import evaluate as ev
from lineas_tl.evaluate import REFERENCE_TEXTS, compare, concept_score, perplexity, plot_tradeoff
from lineas_tl.methods.actadd import DEFAULT_COEFFICIENT


def vowel_scorer(texts):
    """A toy judge in [0.25, 0.75] that reacts to most changes of the text (never 0, so the scores
    relative to the unsteered model are defined whatever a random tiny model generates)."""
    return [0.25 + 0.5 * sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts]


# ------------------------------------------------------------------------------- concept score
def test_concept_score_mean_and_percent() -> None:
    s = concept_score(["a", "b", "c", "d"], lambda texts: [0.1, 0.6, 0.9, 0.5])
    assert s.mean == pytest.approx(0.525) and s.percent == 50.0 and s.n == 4
    with pytest.raises(ValueError, match="returned 1 scores"):
        concept_score(["a", "b"], lambda texts: [0.5])
    with pytest.raises(ValueError, match="NaN"):
        concept_score(["a"], lambda texts: [float("nan")])
    with pytest.raises(ValueError, match="no texts"):
        concept_score([], vowel_scorer)


def test_default_toxicity_scorer_works_offline() -> None:
    pytest.importorskip("profanity_check")
    clean, rude = ev.toxicity_scorer(["have a lovely day my friend", "shut up you stupid fucking idiot"])
    assert 0 <= clean < 0.5 < rude <= 1
    assert ev.toxicity_scorer([]) == []


# ---------------------------------------------------------------------------------- perplexity
def test_perplexity_is_the_model_loss_and_ignores_padding(gpt2_model) -> None:
    texts = list(REFERENCE_TEXTS[:5])
    one_by_one = [perplexity(gpt2_model, [t]) for t in texts]
    for t, p in zip(texts, one_by_one, strict=True):
        with torch.no_grad():
            loss = gpt2_model(gpt2_model.to_tokens(t), return_type="loss")
        assert p == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # corpus perplexity: token-weighted mean NLL, identical whatever the batching and padding
    batched = perplexity(gpt2_model, texts, batch_size=3)
    assert batched == pytest.approx(perplexity(gpt2_model, texts, batch_size=1), rel=1e-5)
    counts = [gpt2_model.to_tokens(t).shape[1] - 1 for t in texts]
    expected = math.exp(sum(c * math.log(p) for c, p in zip(counts, one_by_one, strict=True)) / sum(counts))
    assert batched == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(gpt2_model, texts, batch_size=0)


def test_steering_changes_perplexity(llama_model, text_sets) -> None:
    source, target = text_sets["source"][:16], text_sets["target"][:16]
    steerer = HookedSteerer(llama_model).fit(source, target, method="mean_act", progress=False)
    texts = list(REFERENCE_TEXTS[:8])
    base = perplexity(llama_model, texts)
    assert math.isfinite(base) and base > 1
    assert perplexity(llama_model, texts, steerer=steerer, strength=0.0) == base
    steered = perplexity(llama_model, texts, steerer=steerer, strength=1.0)
    assert math.isfinite(steered) and steered != pytest.approx(base, rel=1e-6)


# ---------------------------------------------------------------------------------- comparison
def test_compare_end_to_end(gpt2_model, text_sets, tmp_path, monkeypatch) -> None:
    calls = []
    real = ev.continuations
    monkeypatch.setattr(ev, "continuations", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    held_out = make_prompts(SOURCE_WORDS, 6, seed=7)
    methods = ["lineas", "linear_act", "mean_act", "iti", "actadd"]
    start = time.perf_counter()
    table = compare(
        gpt2_model,
        source,
        target,
        methods=methods,
        strengths=(0.0, 0.5, 1.0),
        eval_prompts=held_out,
        scorer=vowel_scorer,
        reference_texts=REFERENCE_TEXTS[:6],
        method_kwargs={"lineas": {"steps": 3}},
        max_new_tokens=5,
        out_dir=tmp_path,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"compare took {elapsed:.1f}s on a tiny model"

    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "tradeoff.png").stat().st_size > 10_000
    on_disk = pd.read_csv(tmp_path / "comparison.csv")
    assert len(on_disk) == len(table) == len(methods) * 3
    for col in ("method", "strength", "scale", "score_in", "pct_in", "score_out", "pct_out", "gap", "perplexity"):
        assert col in table.columns
    assert table[["score_in", "score_out", "perplexity", "gap"]].notna().all().all()
    assert table["perplexity"].gt(1).all() and table["score_in"].between(0, 1).all()

    # strength 0 is the unsteered model, evaluated once: one call per prompt set, plus one per
    # (method, strength > 0)
    zero = table[table["strength"] == 0]
    assert zero[["score_in", "score_out", "perplexity"]].nunique().eq(1).all()
    assert len(calls) == 2 * (1 + len(methods) * 2) and calls[:2] == [None, None]
    # ActAdd's strength is its coefficient: strength * actadd_scale
    actadd = table[table["method"] == "actadd"].set_index("strength")["scale"]
    assert actadd[0.5] == 0.5 * DEFAULT_COEFFICIENT and actadd[1.0] == DEFAULT_COEFFICIENT
    assert table[table["method"] != "actadd"].eval("scale == strength").all()
    # steering moves something: every method changes the perplexity at full strength
    full = table[table["strength"] == 1.0].set_index("method")["perplexity"]
    assert (full != zero["perplexity"].iloc[0]).all()
    assert set(table.attrs["histories"]) == set(methods)
    assert table.attrs["histories"]["iti"]["k"] == 12  # ITI's k=48 clipped to the 3 x 4 heads


def test_compare_checks_its_inputs(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:8], text_sets["target"][:8]
    with pytest.raises(ValueError, match="unknown methods"):
        compare(gpt2_model, source, target, methods=["nope"], scorer=vowel_scorer)
    with pytest.raises(ValueError, match="disjoint"):
        compare(gpt2_model, source, target, eval_prompts=[source[0], "a new prompt"], scorer=vowel_scorer)
    with pytest.raises(ValueError, match="not compared"):
        compare(gpt2_model, source, target, methods=["mean_act"], method_kwargs={"lineas": {}}, scorer=vowel_scorer)


def test_compare_without_held_out_prompts_warns(gpt2_model, text_sets) -> None:
    source, target = text_sets["source"][:6], text_sets["target"][:6]
    with pytest.warns(UserWarning, match="in-sample"):
        table = compare(
            gpt2_model, source, target, methods=["mean_act"], strengths=(0.0, 1.0), scorer=vowel_scorer,
            reference_texts=REFERENCE_TEXTS[:3], max_new_tokens=3, progress=False,
        )  # fmt: skip
    assert table["score_out"].isna().all() and table["score_in"].notna().all()


def test_plot_tradeoff_from_a_table(tmp_path) -> None:
    rows = [
        {"method": m, "strength": s, "score_in": 0.5 - s * k, "score_out": 0.5 - s * k / 2, "perplexity": 10 + s * k}
        for m, k in (("lineas", 0.3), ("iti", 0.2))
        for s in (0.0, 0.5, 1.0)
    ]
    path = plot_tradeoff(pd.DataFrame(rows), tmp_path / "sub" / "t.png", title="toy")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_continuations_need_a_tokenizer(native_model) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        ev.continuations(native_model, ["hello"])
    assert torch.is_grad_enabled()
