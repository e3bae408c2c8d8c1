r"""Evaluate steering: concept score of generated text, perplexity, and a fair comparison of methods.

The LinEAS paper (Rodriguez et al. 2025, arXiv 2503.10679) reports two numbers per method and
strength: how much of the concept is left in the model's continuations (e.g. toxicity) and what it
costs in fluency (perplexity of the steered model on reference text). :func:`compare` fits every
method once on the same prompt sets, sites and pooling, sweeps the strength, and reports both, in
sample and out of sample, with 95% bootstrap intervals, the ceiling (the unsteered model on the
target prompts) and a frontier summary (each method's best score within +5/10/25% perplexity).

One module per job:

=================  ===================================================================
``scoring``        judges (:func:`toxicity_scorer`) and :func:`concept_score` with CIs
``bootstrap``      the percentile bootstrap over prompts
``perplexity``     :func:`perplexity` of a (steered) model on reference text
``sampling``       :func:`continuations` under a :class:`GenerationConfig` (:data:`PAPER`)
``grid``           which strengths a sweep visits, coarse to fine
``sweep``          :func:`compare`: fit, sweep the strength, tabulate
``frontier``       :func:`frontier_summary`: the best score within each perplexity budget
``plot``           :func:`plot_tradeoff`
=================  ===================================================================

Example:
    >>> from lineas_tl.evaluate import compare, format_frontier
    >>> table = compare(model, source, target, eval_prompts=held_out, out_dir="results")
    >>> print(format_frontier(table.attrs["frontier"]))
"""

from lineas_tl.evaluate.bootstrap import bootstrap_ci, cluster_means, percentile_interval
from lineas_tl.evaluate.frontier import CEILING, DEFAULT_BUDGETS, format_frontier, frontier_summary, pareto_front
from lineas_tl.evaluate.grid import DISTRIBUTION_MATCH, coarse_to_fine, strength_grid, sweep_jobs
from lineas_tl.evaluate.perplexity import REFERENCE_TEXTS, perplexity
from lineas_tl.evaluate.plot import plot_tradeoff
from lineas_tl.evaluate.sampling import PAPER, GenerationConfig, continuations
from lineas_tl.evaluate.scoring import ConceptScore, Scorer, concept_score, toxicity_scorer
from lineas_tl.evaluate.sweep import COLUMNS, DEFAULT_METHODS, DEFAULT_STRENGTHS, EXTRA_STRENGTHS, compare
from lineas_tl.evaluate.variants import GATE_SUFFIX, base_method, is_gated

__all__ = [
    "CEILING",
    "COLUMNS",
    "DEFAULT_BUDGETS",
    "DEFAULT_METHODS",
    "DEFAULT_STRENGTHS",
    "DISTRIBUTION_MATCH",
    "EXTRA_STRENGTHS",
    "GATE_SUFFIX",
    "PAPER",
    "REFERENCE_TEXTS",
    "ConceptScore",
    "GenerationConfig",
    "Scorer",
    "base_method",
    "bootstrap_ci",
    "cluster_means",
    "coarse_to_fine",
    "compare",
    "concept_score",
    "continuations",
    "format_frontier",
    "frontier_summary",
    "is_gated",
    "pareto_front",
    "percentile_interval",
    "perplexity",
    "plot_tradeoff",
    "strength_grid",
    "sweep_jobs",
    "toxicity_scorer",
]
