"""Control prompts: neutral text that steering should leave alone (the gate's negatives).

``Concept.control_prompts(n, seed)`` draws from a concept's control pool, built here from text that
is none of the concept's fit or evaluation prompts and never the perplexity reference text
(:func:`~lineas_tl.concepts.text.reference_text` reads the Wikipedia articles with ``i % 4 != 0``):

- toxicity and sentiment: the first 8-12 words of news sentences (gensim's ``lee_background``),
  minus every sentence the style concept's prompts come from;
- style, whose source prompts *are* news prose: prefixes of the Wikipedia sentences reserved for
  the style concept (``i % 4 == 0``), minus the sentences its judge is trained on.
"""

from __future__ import annotations

import random
from functools import cache

from lineas_tl.concepts.text import _wiki_paragraphs, news_sentences, prefix, wiki_sentences

POOL_SIZE = 160


@cache
def news_control_pool(used: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Neutral news prefixes, none from a sentence in ``used`` (the style prompts' sentences)."""
    rng = random.Random(19)
    pool = [s for s in news_sentences() if s not in used and len(s.split()) >= 12]
    return _off_reference(prefix(s, rng) for s in rng.sample(pool, min(POOL_SIZE, len(pool))))


@cache
def wiki_control_pool(used: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Encyclopedic prefixes from the style half of the Wikipedia sample, none from a sentence in ``used``."""
    rng = random.Random(19)
    pool = [s for s in wiki_sentences() if s not in used and len(s.split()) >= 12]
    return _off_reference(prefix(s, rng) for s in rng.sample(pool, min(POOL_SIZE + 16, len(pool))))[:POOL_SIZE]


def _off_reference(prefixes: object) -> tuple[str, ...]:
    """Drop any prefix found in a reference paragraph (the sample repeats some text across articles)."""
    reference = "\n".join(_wiki_paragraphs(style_half=False))
    return tuple(p for p in dict.fromkeys(prefixes) if p not in reference)  # type: ignore[call-overload]
