"""Control prompts never overlap the evaluation prompts, the fit pools or the perplexity reference text."""

import random

import pytest

from lineas_tl.concepts import available_concepts, get_concept
from lineas_tl.concepts.text import _wiki_paragraphs

CONCEPTS = {name: get_concept(name) for name in available_concepts()}


@pytest.mark.parametrize("name", available_concepts())
def test_control_prompts_are_disjoint_from_evaluation_fit_and_reference_text(name):
    c = CONCEPTS[name]
    control = c.control_prompts(len(c.control_pool), seed=0)
    assert len(control) >= 64 and len(set(control)) == len(control)
    every_prompt = {p for other in CONCEPTS.values() for p in (*other.eval_prompts, *other.source_prompts, *other.target_prompts)}
    assert not set(control) & every_prompt
    # nor any evaluation prompt inside a control prompt or the other way round
    evals = [p for other in CONCEPTS.values() for p in other.eval_prompts]
    assert not [(a, b) for a in control for b in evals if a in b or b in a]
    reference = " \n ".join(_wiki_paragraphs(style_half=False))  # every paragraph reference_text() can draw
    assert not [p for p in control if p in reference]


def test_control_prompts_are_deterministic_and_split_is_unchanged():
    c = CONCEPTS["toxicity"]
    assert c.control_prompts(32, seed=3) == c.control_prompts(32, seed=3)
    assert c.control_prompts(32, seed=3) != c.control_prompts(32, seed=4)
    rng = random.Random(0)
    source = rng.sample(c.source_prompts, 32)
    assert tuple(c.split(32, seed=0)) == (source, rng.sample(c.target_prompts, 32))
    with pytest.raises(ValueError, match="control prompts"):
        c.control_prompts(10_000)
