"""LinEAS's own head choice: a head-grouped sparse fit at every block's attn.hook_z, ranked by norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineas_tl import HookedSteerer, SteeringInputError
from lineas_tl.methods.head_choice import head_norms, head_selection_fit, lineas_heads, top_k_heads
from lineas_tl.methods.iti import z_sites
from planted import planted_heads, random_prompts

PLANTED = [(2, 1), (1, 3)]
QUIET = dict(progress=False, warn=False)


def test_top_k_heads_ranks_by_value_breaks_ties_by_the_earlier_head_and_drops_the_rest():
    values = np.array([[0.0, 3.0, 0.5], [2.0, 3.0, 0.0]])  # [n_layers, n_heads]
    assert top_k_heads(values, 3) == [[0, 1], [1, 1], [1, 0]]
    assert top_k_heads(values, 6, above=0.0) == [[0, 1], [1, 1], [1, 0], [0, 2]]  # the zeros are not kept
    assert top_k_heads(values, 1, above=5.0) == []


def test_lineas_heads_finds_the_heads_a_planted_concept_lives_in(native_model):
    source, target = random_prompts(32, seed=1), random_prompts(32, seed=2)
    delta = torch.linspace(-1.0, 1.0, 8) * 2.0
    with planted_heads(native_model, source, PLANTED, delta):
        heads = lineas_heads(native_model, source, target, k=2, **QUIET)
        fitted = head_selection_fit(native_model, source, target, **QUIET)
        assert lineas_heads(native_model, source, target, **QUIET) == heads[:1]  # ITI's share of 12 heads: 1
        with pytest.raises(SteeringInputError, match="gamma=10 switched every head off: pass a smaller gamma"):
            lineas_heads(native_model, source, target, gamma=10.0, **QUIET)
    assert sorted(map(tuple, heads)) == sorted(PLANTED)
    norms = head_norms(fitted)  # the same fit, read by hand from its history
    assert norms.shape == (3, 4)
    for layer, site in enumerate(z_sites(native_model)):
        assert norms[layer].tolist() == fitted.history_["group_norms"][site]
    first, second = (norms[layer, head] for layer, head in heads)
    others = np.delete(norms.flatten(), [layer * 4 + head for layer, head in heads])
    assert first >= second > 5 * others.max()  # the planted heads stand far above every other
    assert (others == 0).mean() > 0.5  # the group lasso switched most other heads off


def test_head_choice_refuses_fits_it_cannot_rank_and_bad_k(native_model):
    source, target = random_prompts(16, seed=1), random_prompts(16, seed=2)
    dense = HookedSteerer(native_model, sites=z_sites(native_model)).fit(source, target, steps=3, **QUIET)
    with pytest.raises(SteeringInputError, match="needs a LinEAS fit with group_by='head' at every block's attn.hook_z"):
        head_norms(dense)
    with pytest.raises(SteeringInputError, match=r"k=0 heads: pass 1 <= k <= 12"):
        lineas_heads(native_model, source, target, k=0, **QUIET)
