"""Offline concept data sets and judges: sizes, disjointness, determinism, judges' sense."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineas_tl import concepts
from lineas_tl.concepts import get_concept, reference_text
from lineas_tl.concepts import style as style_mod
from lineas_tl.concepts import text as text_mod

NAMES = ["toxicity", "sentiment", "style"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("concept code tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def style_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fit the style classifier once, into a temporary cache root."""
    root = tmp_path_factory.mktemp("lineas-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LINEAS_TL_CACHE", str(root))
    style_mod._classifier.cache_clear()
    yield root
    style_mod._classifier.cache_clear()
    mp.undo()


@pytest.mark.parametrize("name", NAMES)
def test_sets_sizes_disjoint_deterministic(name: str) -> None:
    c = get_concept(name)
    assert c.name == name and c.goal in ("decrease", "increase")
    assert len(c.source_prompts) >= 64 and len(c.target_prompts) >= 64 and len(c.eval_prompts) >= 64
    for prompts in (c.source_prompts, c.target_prompts, c.eval_prompts):
        assert len(set(prompts)) == len(prompts)
        assert all(3 <= len(p.split()) <= 15 for p in prompts)
    fit = set(c.source_prompts) | set(c.target_prompts)
    assert not fit & set(c.eval_prompts)
    assert not set(c.source_prompts) & set(c.target_prompts)
    again = get_concept(name)
    assert (again.source_prompts, again.target_prompts, again.eval_prompts) == (
        c.source_prompts,
        c.target_prompts,
        c.eval_prompts,
    )


@pytest.mark.parametrize("name", NAMES)
def test_split(name: str) -> None:
    c = get_concept(name)
    source, target = c.split(n_fit=32, seed=0)
    assert len(source) == len(target) == 32
    assert set(source) <= set(c.source_prompts) and set(target) <= set(c.target_prompts)
    assert c.split(32, seed=0) == (source, target)
    assert c.split(32, seed=1) != (source, target)
    with pytest.raises(ValueError):
        c.split(n_fit=10_000)


@pytest.mark.parametrize("name", ["toxicity", "sentiment"])
def test_split_paired_draws_matched_pairs(name: str) -> None:
    c = get_concept(name)
    assert c.paired
    source, target = c.split(n_fit=32, seed=0, paired=True)
    pairs = {s: t for s, t in zip(c.source_prompts, c.target_prompts)}
    assert len(set(source)) == 32 and [pairs[s] for s in source] == target
    # the pools pair prompt by prompt: the same frame slot, only the concept's words differ
    src_words, tgt_words = set(source[0].split()), set(target[0].split())
    assert src_words & tgt_words and src_words != tgt_words
    assert c.split(32, seed=0, paired=True) == (source, target) != c.split(32, seed=1, paired=True)
    assert c.split(32, seed=0) == c.split(32, seed=0, paired=False)  # the default draw is unchanged
    _, chat_target = c.chat_split(32, seed=0, instruction="", paired=True)
    assert [m[0]["content"] for m in chat_target] == target


def test_split_paired_refuses_unpaired_pools() -> None:
    c = get_concept("style")
    assert not c.paired
    with pytest.raises(ValueError, match="not paired prompt by prompt.*paired=False"):
        c.split(32, paired=True)


def test_unknown_concept() -> None:
    assert concepts.available_concepts() == NAMES
    with pytest.raises(ValueError, match="unknown concept"):
        get_concept("politeness")


def test_toxicity_judge() -> None:
    c = get_concept("toxicity")
    toxic, benign = c.scorer(
        ["Shut up, you stupid moron, nobody likes you.", "Have a wonderful day, friend."]
    )
    assert 0.0 <= benign < 0.2 < 0.8 < toxic <= 1.0
    # the prompt sets themselves differ in the judged direction
    src, tgt = c.scorer(c.source_prompts), c.scorer(c.target_prompts)
    assert sum(src) / len(src) > sum(tgt) / len(tgt) + 0.5
    assert c.goal == "decrease" and c.scorer([]) == []


def test_sentiment_judge() -> None:
    c = get_concept("sentiment")
    neg, neutral, pos = c.scorer(
        [
            "This was awful, I hated every minute.",
            "The meeting is at 3 pm.",
            "I loved it, truly wonderful!",
        ]
    )
    assert pos < 0.2 < 0.8 < neg
    assert neutral == pytest.approx(0.5)
    assert c.goal == "decrease"


def test_style_classifier(style_cache: Path) -> None:
    acc = concepts.style_classifier_accuracy()
    assert acc > 0.8
    report = style_mod.style_classifier_report()
    assert min(report["group_accuracy"].values()) > 0.8
    assert list(style_cache.glob("concepts/style-classifier-*.joblib"))
    c = get_concept("style")
    old, modern = c.scorer(
        [
            "Wherefore dost thou weep, sweet maid? I prithee tell me.",
            "The company reported higher revenue this quarter.",
        ]
    )
    assert old > 0.8 and modern < 0.2
    assert c.goal == "increase"
    src, tgt = c.scorer(c.source_prompts), c.scorer(c.target_prompts)
    assert sum(tgt) / len(tgt) > sum(src) / len(src) + 0.5
    # what compare ranks: lower once steering has worked, whichever way the judge points
    assert c.lower_is_better()(["Wherefore dost thou weep, sweet maid? I prithee tell me."]) == [1 - old]
    tox = get_concept("toxicity")
    assert tox.lower_is_better() is tox.scorer


def test_style_classifier_cache_reused(style_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    concepts.style_classifier_accuracy()  # make sure it is fitted and cached
    style_mod._classifier.cache_clear()

    def no_refit() -> None:
        raise AssertionError("classifier refitted despite a cache")

    monkeypatch.setattr(style_mod, "_fit", no_refit)
    assert concepts.style_classifier_accuracy() > 0.8


def test_style_prompts_not_in_classifier_data() -> None:
    groups = style_mod._training_groups()
    used = {s for part in style_mod._prompt_sentences() for s in part}
    assert not used & {s for sents in groups.values() for s in sents}


def test_reference_text() -> None:
    paragraphs = reference_text(n=16, seed=0)
    assert len(paragraphs) == 16 and paragraphs == reference_text(n=16, seed=0)
    assert paragraphs != reference_text(n=16, seed=1)
    markup = re.compile(r"\[\[|\]\]|\{\{|\}\}|''|==|<[a-z/]|\||&[a-z]+;|^[*#:]")
    for p in paragraphs:
        assert len(p.split()) >= 30
        assert not markup.search(p), p
    # disjoint from the Wikipedia text the style concept trains on
    style_wiki = set(text_mod.wiki_sentences())
    assert not style_wiki & {s for p in paragraphs for s in text_mod.split_sentences(p)}
    short = reference_text(n=8, seed=0, max_words=50)
    assert all(len(p.split()) <= 50 or len(text_mod.split_sentences(p)) == 1 for p in short)


def test_sentiment_fit_pools_pair_frame_slots() -> None:
    from lineas_tl.concepts import sentiment

    source, target = sentiment.fit_pools(["{s} was bad", "I hated {s_l}"], ["{s} was good", "I loved {s_l}"])
    assert len(source) == len(target) == 2 * len(sentiment._FIT_TOPICS)
    assert all(s.replace("bad", "good").replace("hated", "loved") == t for s, t in zip(source, target))
    with pytest.raises(ValueError, match="one of each per pair"):
        sentiment.fit_pools(["{s} was bad"], [])
