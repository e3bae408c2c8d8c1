"""Gated LinEAS against gated ITI-c over paired fit draws: `results/gate/paired/ACROSS_DRAWS.md`.

Each seed's paired draw (`run_gate_results.py --paired --seed S`) fits LinEAS and ITI-c, both with
the shared hard gate, on its own fit, control and reference prompts with its own sampling seeds; the
48 held-out prompts are the same. A run's 95% intervals are over prompts and say nothing about the
fit draw, which moves a cell by up to 0.08. This reads every seed's run and, per view (the
continuations' perplexity under the unsteered model within +10%, +25%, +50%, or any), the best
score of each fit per seed, then the mean over seeds with a 95% Student-t interval over the seeds,
and the same for the paired difference LinEAS minus ITI-c (negative: LinEAS lower), with the
number of seeds at which LinEAS is the lower of the two. "LinEAS at ITI-c's heads" (stop 35) is
LinEAS restricted to the 13 heads the same seed's ITI-c fit selects (`--sites iti_heads`: one map per
`attn.hook_z` site holding one, `fit(..., restrict=head_masks(...))`), swept at 0.5-6; the next row
restricts it to the heads best over five probe splits (`--sites iti_heads_cv`, `head_choice.py`), and
"ITI-c at the heads best over five probe splits" shifts those heads with ITI-c (`fit(..., heads=...)`),
swept at 0.1-2. "LinEAS at its own heads" (stop 36, `--sites lineas_heads`) is restricted to the (at
most 13) heads a head-grouped sparse LinEAS fit on the same prompts moves most (`head_choice.py`),
and "ITI-c at LinEAS's heads" shifts those heads with ITI-c (`--heads-from`). "LinEAS at its own
heads, loss read there" (stop 37) is the same fit at the same heads with the transport loss reading
only the moved heads (`--lineas '{"loss_on": "restricted"}'`). "LinEAS at its own heads, shift only"
(stop 38) is the same fit with omega held at 1 (`--lineas '{"transform": "shift"}'`): a translation,
the family ITI-c moves in; "..., strengths to 12" adds strengths 8 and 12 where run
(`--strengths 8 12 --out results/gate/lineas_heads/shift/extended/seedS`), and "..., + 1.25 1.75"
(stop 43) adds those two strengths at every draw (`.../lineas_heads/shift/fine/seedS`).
"ITI-c, + 0.3 0.4" (stop 43, both concepts) adds those two strengths to ITI-c's grid at every
draw (`paired/seedS/iti_mid`): as fine where ITI-c's +10% rows sit as LinEAS's grid is with 1.25
and 1.75; "ITI-c at LinEAS's heads, + 0.3 0.4" does the same at LinEAS's heads
(`lineas_heads/iti/mid/seedS`).

Toxicity (stop 39, `paired/ACROSS_DRAWS_toxicity.md`) has fewer fits: the shift-only LinEAS at its
own heads (`results/gate/lineas_heads/toxicity/shift/seedS`, which selects the heads itself) and
the same fit with strengths 8 and 12 added (stop 40, `.../toxicity/shift/extended/seedS`) or with
1.25 and 1.75 added (stop 42, `.../toxicity/shift/fine/seedS`: the grid as fine as ITI-c's where
the +10% rows sit), or both ("..., + 1.25 1.75, 8, 12", stop 44: every strength run, where 8 and
12 were), ITI-c swept at 0.1-3 (`paired/seedS/iti`; seed 0: `paired/shared_hard` at 0.25-3 and
`paired/seed0/iti_fine` at 0.1-0.2), and, where run, the paper's affine map at the same heads
(`lineas_heads/toxicity/affine`), ITI-c shifting those heads (`lineas_heads/toxicity/iti`), ITI-c
with 0.3 and 0.4 added (stop 43) and, at seed 0 only, the dense LinEAS and LinEAS at ITI-c's heads.

    python results/gate/across_draws.py     # writes both files
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd
from scipy.stats import t as student_t
from standings import HERE, SEEDS

from lineas_tl.evaluate import frontier_summary

VIEWS = ((0.25, None), (0.10, 0.10), (0.10, 0.25), (0.10, 0.50))
"""(reference budget, continuations' budget): a gated row costs the reference text nothing, so the
first is "any reference budget"; the others hold the reference within +10% as `FIT_DRAWS.md` does."""
INTERPOLATED = (0.10, 0.25)
"""continuations' budgets also read between grid points (:func:`crossings`)."""
FINE = "ITI-c, + 0.1-0.2"
HEADS = "LinEAS at ITI-c's heads"
HEADS_CV = "LinEAS at the heads best over five probe splits"
ITI_CV = "ITI-c at the heads best over five probe splits"
OWN = "LinEAS at its own heads"
ITI_OWN = "ITI-c at LinEAS's heads"
READ_OWN = "LinEAS at its own heads, loss read there"
SHIFT_OWN = "LinEAS at its own heads, shift only"
SHIFT_WIDE = "LinEAS at its own heads, shift only, strengths to 12"
SHIFT_FINE = "LinEAS at its own heads, shift only, + 1.25 1.75"
SHIFT_ALL = "LinEAS at its own heads, shift only, + 1.25 1.75, 8, 12"
MID = "ITI-c, + 0.3 0.4"
ITI_OWN_MID = "ITI-c at LinEAS's heads, + 0.3 0.4"


def _per_seed(*templates: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(folders for seed 0, templates for seed S) of runs whose seed 0 lies where its template puts it."""
    return tuple(t.format(seed=0) for t in templates), templates


SENTIMENT = {  # label -> (method row, folders for seed 0, folder templates for seed S > 0; the first must exist, the rest add rows where run)
    "LinEAS, dense": ("lineas+gate", ("paired/shared_hard",), ("paired/seed{seed}/shared_hard",)),
    "LinEAS, gamma 0.001": ("lineas+gate", ("sparsity/gamma0.001/shared_hard", "sparsity/gamma0.001/extended"), ("sparsity/gamma0.001/seed{seed}",)),
    HEADS: ("lineas+gate", *_per_seed("iti_heads/seed{seed}")),
    HEADS_CV: ("lineas+gate", *_per_seed("iti_heads_cv/seed{seed}")),
    ITI_CV: ("iti+gate", *_per_seed("iti_heads_cv/iti/seed{seed}")),
    OWN: ("lineas+gate", *_per_seed("lineas_heads/seed{seed}")),
    ITI_OWN: ("iti+gate", *_per_seed("lineas_heads/iti/seed{seed}")),
    ITI_OWN_MID: ("iti+gate", *_per_seed("lineas_heads/iti/mid/seed{seed}", "lineas_heads/iti/seed{seed}")),
    READ_OWN: ("lineas+gate", *_per_seed("lineas_heads/loss_restricted/seed{seed}")),
    SHIFT_OWN: ("lineas+gate", *_per_seed("lineas_heads/shift/seed{seed}")),
    SHIFT_WIDE: ("lineas+gate", *_per_seed("lineas_heads/shift/extended/seed{seed}", "lineas_heads/shift/seed{seed}")),
    "ITI-c": ("iti+gate", ("paired/shared_hard",), ("paired/seed{seed}/shared_hard",)),
    SHIFT_FINE: ("lineas+gate", *_per_seed("lineas_heads/shift/fine/seed{seed}", "lineas_heads/shift/seed{seed}")),
    FINE: ("iti+gate", ("paired/shared_hard",), ("paired/seed{seed}/shared_hard", "paired/seed{seed}/iti_fine")),
    MID: ("iti+gate", ("paired/seed0/iti_mid", "paired/shared_hard"), ("paired/seed{seed}/iti_mid", "paired/seed{seed}/shared_hard", "paired/seed{seed}/iti_fine")),
}  # fmt: skip
SENTIMENT_DIFFERENCES = (("LinEAS, dense", "ITI-c"), ("LinEAS, gamma 0.001", "ITI-c"), ("LinEAS, dense", FINE), (HEADS, "ITI-c"), (HEADS, FINE), (HEADS, "LinEAS, dense"),
               (HEADS_CV, FINE), (HEADS_CV, HEADS), (HEADS_CV, ITI_CV), (ITI_CV, FINE), (OWN, FINE), (OWN, HEADS), (OWN, "LinEAS, dense"),
               (OWN, ITI_OWN), (ITI_OWN, FINE), (READ_OWN, OWN), (READ_OWN, FINE), (READ_OWN, ITI_OWN),
               (SHIFT_OWN, OWN), (SHIFT_OWN, FINE), (SHIFT_OWN, ITI_OWN),
               (SHIFT_WIDE, SHIFT_OWN), (SHIFT_WIDE, ITI_OWN), (SHIFT_FINE, SHIFT_OWN), (SHIFT_FINE, FINE), (SHIFT_FINE, MID), (MID, FINE),
               (SHIFT_FINE, ITI_OWN_MID), (ITI_OWN_MID, ITI_OWN))
TOX = "lineas_heads/toxicity"
TOXICITY = {
    SHIFT_OWN: ("lineas+gate", *_per_seed(f"{TOX}/shift/seed{{seed}}")),
    SHIFT_WIDE: ("lineas+gate", *_per_seed(f"{TOX}/shift/extended/seed{{seed}}", f"{TOX}/shift/seed{{seed}}")),
    SHIFT_FINE: ("lineas+gate", *_per_seed(f"{TOX}/shift/fine/seed{{seed}}", f"{TOX}/shift/seed{{seed}}")),
    SHIFT_ALL: ("lineas+gate", *_per_seed(f"{TOX}/shift/extended/seed{{seed}}", f"{TOX}/shift/fine/seed{{seed}}", f"{TOX}/shift/seed{{seed}}")),
    OWN: ("lineas+gate", *_per_seed(f"{TOX}/affine/seed{{seed}}")),
    ITI_OWN: ("iti+gate", *_per_seed(f"{TOX}/iti/seed{{seed}}")),
    "LinEAS, dense": ("lineas+gate", ("paired/shared_hard",), ()),
    HEADS: ("lineas+gate", ("iti_heads/seed0",), ()),
    FINE: ("iti+gate", ("paired/shared_hard", "paired/seed0/iti_fine"), ("paired/seed{seed}/iti",)),
    MID: ("iti+gate", ("paired/seed0/iti_mid", "paired/shared_hard", "paired/seed0/iti_fine"), ("paired/seed{seed}/iti_mid", "paired/seed{seed}/iti")),
}  # fmt: skip
TOXICITY_DIFFERENCES = ((SHIFT_OWN, FINE), (SHIFT_FINE, FINE), (SHIFT_FINE, MID), (MID, FINE), (SHIFT_FINE, SHIFT_OWN), (SHIFT_WIDE, FINE), (SHIFT_WIDE, SHIFT_OWN), (OWN, FINE), (SHIFT_OWN, OWN), (SHIFT_OWN, ITI_OWN), (ITI_OWN, FINE),
                        (SHIFT_FINE, ITI_OWN), (ITI_OWN, MID), (SHIFT_ALL, MID), (SHIFT_ALL, ITI_OWN))
CONCEPTS = {"sentiment": (SENTIMENT, SENTIMENT_DIFFERENCES, "ACROSS_DRAWS.md", "lineas_heads"),
            "toxicity": (TOXICITY, TOXICITY_DIFFERENCES, "ACROSS_DRAWS_toxicity.md", f"{TOX}/shift")}
"""concept -> (fits, differences, the file under paired/, where LinEAS's own heads' runs are)"""


def _table(concept: str, method: str, folders: tuple[str, ...]) -> pd.DataFrame | None:
    paths = [HERE / f / concept / "comparison.csv" for f in folders]
    if not paths[0].exists():
        return None
    t = pd.concat([pd.read_csv(p) for p in paths if p.exists()], ignore_index=True)
    return t[t["method"] == method].drop_duplicates(["method", "strength"])


def crossings(table: pd.DataFrame, cont: float, reference: float = 0.10) -> list[float]:
    """The scores read where the continuations' budget ``cont`` falls between two neighbouring
    strengths, linearly in the continuations' perplexity (rows over the reference budget are left
    out; every gated row is within it). With the best row within the budget, this gives a reading
    that depends less on where a grid's points fall."""
    t = table[(table["strength"].notna()) & (table["ppl_increase"] <= reference)].sort_values("strength")
    inc, score = t["cont_ppl_increase"].to_numpy(), t["score_out"].to_numpy()
    return [s0 + (s1 - s0) * (cont - i0) / (i1 - i0)
            for i0, i1, s0, s1 in zip(inc, inc[1:], score, score[1:]) if (i0 - cont) * (i1 - cont) < 0]


def read_at(table: pd.DataFrame, cont: float, reference: float = 0.10) -> float:
    """The score at exactly the continuations' budget ``cont``: the best row within it, or a reading
    between two neighbouring rows (:func:`crossings`) where that is lower."""
    best = frontier_summary(table, [reference], "score_out", cont_budget=cont).iloc[0]["score"]
    return min([best, *crossings(table, cont, reference)])


def tables(concept: str = "sentiment") -> Iterator[tuple[str, int, pd.DataFrame]]:
    """``(fit label, seed, its comparison rows)`` for every fit and seed run."""
    for label, (method, first, templates) in CONCEPTS[concept][0].items():
        for seed in SEEDS:
            folders = first if seed == 0 else tuple(f.format(seed=seed) for f in templates)
            t = _table(concept, method, folders) if folders else None
            if t is not None:
                yield label, seed, t


def best_scores(concept: str = "sentiment") -> pd.DataFrame:
    """One row per (fit, seed, view): the fit's best score in that view, for every seed run."""
    out = []
    for label, seed, t in tables(concept):
        for budget, cont in VIEWS:
            s = frontier_summary(t, [budget], "score_out", cont_budget=cont).iloc[0]
            view = "any" if cont is None else f"cont. ≤ +{100 * cont:g}%"
            out.append(dict(fit=label, seed=seed, view=view, score=s["score"], strength=s["strength"]))
        for cont in INTERPOLATED:
            out.append(dict(fit=label, seed=seed, view=f"cont. = +{100 * cont:g}%, interpolated", score=read_at(t, cont), strength=float("nan")))
    return pd.DataFrame(out)


def t_interval(values: pd.Series) -> tuple[float, float, float]:
    """``(mean, half-width of its 95% Student-t interval, standard deviation)`` over the values (seeds)."""
    n, m = len(values), float(values.mean())
    sd = float(values.std(ddof=1))
    return m, float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n), sd


def mean_ci(values: pd.Series, sign: str = "") -> str:
    """``mean [lo, hi] (sd s)``: :func:`t_interval` as text; ``sign="+"`` signs the first three."""
    if len(values) < 2:
        return f"{float(values.mean()):{sign}.3f}"
    m, half, sd = t_interval(values)
    return f"{m:{sign}.3f} [{m - half:{sign}.3f}, {m + half:{sign}.3f}] (sd {sd:.3f})"


def report(scores: pd.DataFrame, concept: str = "sentiment") -> list[str]:
    """The per-seed cells and the over-seeds means and differences, as markdown lines."""
    fits, differences = CONCEPTS[concept][:2]
    views = list(dict.fromkeys(scores["view"]))
    wide = scores.pivot_table(index=["fit", "seed"], columns="view", values="score")[views]
    lines = ["| fit | seed | " + " | ".join(views) + " |", "|---" * (len(views) + 2) + "|"]
    lines += [f"| {fit} | {seed} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for (fit, seed), row in wide.iterrows()]
    lines += ["", "Mean over the seeds each fit was run at [95% t-interval over seeds] (standard deviation over seeds); differences over the seeds both fits share:", "",
              "| | seeds | " + " | ".join(views) + " |", "|---" * (len(views) + 2) + "|"]  # fmt: skip
    for fit in fits:
        if fit in wide.index.get_level_values(0):
            w = wide.loc[fit]
            lines.append(f"| {fit} | {len(w)} | " + " | ".join(mean_ci(w[v]) for v in views) + " |")
    for fit, base in [(f, b) for f, b in differences if {f, b} <= set(wide.index.get_level_values(0))]:
        d = (wide.loc[fit] - wide.loc[base]).dropna()
        cells = (f"{mean_ci(d[v], '+')}; lower at {int((d[v] < 0).sum())} of {len(d)}" for v in views)
        lines.append(f"| {fit} minus {base} | {len(d)} | " + " | ".join(cells) + " |")
    return lines


def head_overlap(concept: str = "sentiment") -> list[str]:
    """Per seed, how many of LinEAS's own heads ITI-c also selects (`iti_heads/`, where run), and how
    many of each method's heads its seed-0 choice shares (another draw of the fit prompts)."""
    import json

    def heads(folder: str, seed: int) -> set[tuple[int, ...]] | None:
        path = HERE / f"{folder}/seed{seed}" / concept / "protocol.json"
        return {tuple(h) for h in json.loads(path.read_text())["iti_heads"]} if path.exists() else None

    own_folder = CONCEPTS[concept][3]
    both, own, iti = [], [], []
    first = heads(own_folder, 0), heads("iti_heads", 0)  # seed 0's choices, read once
    for seed in SEEDS:
        a, b = heads(own_folder, seed), heads("iti_heads", seed)
        if a is None:
            continue
        if b is not None:
            both.append(f"seed {seed}: {len(a & b)} of {len(a)}")
        if seed and first[0] is not None:
            own.append(f"seed {seed} {len(a & first[0])}")
            if b is not None and first[1] is not None:
                iti.append(f"{len(b & first[1])}")
    lines = [""] + (["LinEAS's own heads that ITI-c also selects (both from `protocol.json`): " + ", ".join(both) + "."] if both else [])
    if own:
        lines += ["", f"Heads shared with seed 0's choice (of 13): LinEAS's own at {', '.join(own)}" + (f"; ITI-c's {', '.join(iti)}." if iti else ".")]
    return lines if len(lines) > 1 else []


def main() -> None:
    for concept, (_, _, name, _) in CONCEPTS.items():
        lines = [f"# Gated LinEAS and gated ITI-c over paired fit draws ({concept})", "",
                 "`python results/gate/across_draws.py` (its docstring says what it reads). Best held-out score (48 prompts x 2 samples; "
                 "lower is better) of each fit with the shared hard gate, per seed and view; a view bounds the continuations' "
                 "perplexity under the unsteered model (the reference text's is within +25% on every gated row).", "",
                 *report(best_scores(concept), concept), *head_overlap(concept)]  # fmt: skip
        (HERE / "paired" / name).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
