"""The ranking across fit draws: seeds, sentence frames, paired draws, targets and sparsity.

Stop 30 explained gated LinEAS's last place on sentiment by its fit frames: fitted on seed 0's draw
of the concept's 8 frames, plain LinEAS moved its fit prompts and left the 48 held-out ones where
they were. This ranks each fit's runs on the same 48 held-out prompts, one table per fit:

- seed 0 and seed 1 (another draw of the fit, control and reference prompts and of the sampling
  seeds), each with the concept's fit pools and with `varied_frames.py`'s pools (24 more frame
  pairs);
- for LinEAS and ITI-c, gated, draws in matched pairs (`split(..., paired=True)`, see
  `paired_draws.py`) at seeds 0-8 (`across_draws.py` summarises them over the seeds), and seed 0
  and 1's paired draws with `intense_target.py`'s emphatic target;
- LinEAS with the sparse-group-lasso on (``gamma`` 0.001, 0.003 and 0.01 on seed 0's paired draw,
  0.001 also plain, on seeds 1-3's paired draws, on the emphatic target and on seed 0's 32
  frames), at ITI-c's sites (every block's ``attn.hook_z``, ``--sites heads``), and at the heads
  the same seed's ITI-c fit selects (``--sites iti_heads``, stop 35; seeds 0-8 on sentiment, seed 0
  on toxicity), at the heads best over five probe splits (``--sites iti_heads_cv``, seeds 0-3; ITI-c at those
  heads is in `paired/ACROSS_DRAWS.md` only), or at the heads a head-grouped sparse LinEAS fit moves
  most (``--sites lineas_heads``, stop 36), there with the transport loss read only at those heads
  (``fit(..., loss_on="restricted")``, stop 37) or with omega held at 1 (``fit(..., transform="shift")``,
  stop 38; at 1.25 and 1.75 added in stop 43); on toxicity (stop 39) the shift-only (swept at 0.5-6,
  at 8 and 12 in stop 40, at 1.25 and 1.75 in stop 42) and, where run, the affine fit at LinEAS's own
  heads against ITI-c swept at 0.1-3, per paired draw; ITI-c's 0.1-0.2 (sentiment, where run) and
  0.3 and 0.4 (stop 43, both concepts) are added to its rows.

Cells as in `STANDINGS_48.md`; views: within +5/+10/+25% reference perplexity, and within +10%
with the continuations within +10/+25/+50%. Writes `FIT_DRAWS.md`.

    python results/gate/fit_draws.py
"""

from __future__ import annotations

from pathlib import Path

from standings import HERE, ROOT, RUNS_48, SEEDS, rows, standings


def _runs(*runs: tuple[str, str, str | None]) -> tuple[tuple[str, str, str | None], ...]:
    """``(folder under results/gate, site label, gate label)`` as :data:`standings.RUNS_48` holds them."""
    return tuple(("{root}/gate/" + folder + "/{concept}", sites, gate) for folder, sites, gate in runs)


SEED_1 = _runs(("shared_hard_default_48/seed1", "ln2", "shared hard gate"), ("plain_default_48/seed1", "ln2", None))
PAIRED = _runs(("paired/shared_hard", "ln2", "shared hard gate"), ("paired/plain", "ln2", None))  # split(..., paired=True)
SPARSE = _runs(("sparsity/gamma0.001/shared_hard", "ln2, gamma 0.001", "shared hard gate"),  # stop 33: fit(gamma=...), --sites heads
               ("sparsity/gamma0.001/extended", "ln2, gamma 0.001", "shared hard gate"),
               ("sparsity/gamma0.001/plain", "ln2, gamma 0.001", None),
               ("sparsity/gamma0.003/shared_hard", "ln2, gamma 0.003", "shared hard gate"),
               ("sparsity/gamma0.01/shared_hard", "ln2, gamma 0.01", "shared hard gate"),
               ("heads/shared_hard", "heads", "shared hard gate"),
               ("iti_heads/seed0", "ITI-c's heads", "shared hard gate"),  # stop 35: fit(restrict=head_masks(...))
               ("iti_heads_cv/seed0", "heads over 5 splits", "shared hard gate"),
               ("lineas_heads/seed0", "LinEAS's heads", "shared hard gate"),  # stop 36: group_by="head"
               ("lineas_heads/loss_restricted/seed0", "LinEAS's heads, loss there", "shared hard gate"),  # stop 37
               ("lineas_heads/shift/seed0", "LinEAS's heads, shift only", "shared hard gate"),  # stop 38: transform="shift"
               ("lineas_heads/shift/fine/seed0", "LinEAS's heads, shift only", "shared hard gate"),  # stop 43: 1.25, 1.75
               ("paired/seed0/iti_mid", "ln2", "shared hard gate"))  # stop 43: ITI-c at 0.3, 0.4
FITS = {  # (concept, fit) -> the runs read
    ("toxicity", "seed 0"): RUNS_48,
    ("toxicity", "seed 1"): SEED_1,
    ("sentiment", "seed 0, the concept's 8 frames"): RUNS_48,
    ("sentiment", "seed 1, the concept's 8 frames"): SEED_1,
    ("sentiment", "seed 0, 32 frames"): _runs(("varied_frames", "ln2", "shared hard gate"), ("varied_frames/baselines", "outputs", "per-site gate"),
                                              ("sparsity/gamma0.001/varied_frames", "ln2, gamma 0.001", "shared hard gate")),
    ("sentiment", "seed 1, 32 frames"): _runs(("varied_frames/seed1", "ln2", None)),
    ("toxicity", "seed 0, paired draw"): PAIRED,
    ("sentiment", "seed 0, paired draw"): PAIRED,
    ("toxicity", "seed 0, paired draw, LinEAS sparse or at ITI-c's heads"): PAIRED + SPARSE,
    ("sentiment", "seed 0, paired draw, LinEAS sparse or at the heads"): PAIRED + SPARSE,
    **{("sentiment", f"seed {seed}, paired draw, gated LinEAS (dense, sparse and at ITI-c's heads where run) and ITI-c"): _runs(
        (f"paired/seed{seed}/shared_hard", "ln2", "shared hard gate"), (f"sparsity/gamma0.001/seed{seed}", "ln2, gamma 0.001", "shared hard gate"),
        (f"iti_heads/seed{seed}", "ITI-c's heads", "shared hard gate"), (f"iti_heads_cv/seed{seed}", "heads over 5 splits", "shared hard gate"),
        (f"lineas_heads/seed{seed}", "LinEAS's heads", "shared hard gate"),
        (f"lineas_heads/loss_restricted/seed{seed}", "LinEAS's heads, loss there", "shared hard gate"),
        (f"lineas_heads/shift/seed{seed}", "LinEAS's heads, shift only", "shared hard gate"),
        (f"lineas_heads/shift/fine/seed{seed}", "LinEAS's heads, shift only", "shared hard gate"),  # stop 43: 1.25, 1.75
        (f"paired/seed{seed}/iti_fine", "ln2", "shared hard gate"), (f"paired/seed{seed}/iti_mid", "ln2", "shared hard gate"))
       for seed in SEEDS[1:]},  # a seed not run is skipped
    **{("sentiment", f"seed {seed}, paired draw, emphatic target"): _runs((f"intense_target{sub}/shared_hard", "ln2", "shared hard gate"),
                                                                          (f"intense_target{sub}/plain", "ln2", None))
       + (_runs(("sparsity/gamma0.001/emphatic", "ln2, gamma 0.001", "shared hard gate")) if seed == 0 else ())
       for seed, sub in ((0, ""), (1, "/seed1"))},  # intense_target.py
    **{("toxicity", f"seed {seed}, paired draw, gated LinEAS at its own heads and ITI-c"): _runs(
        *((("paired/shared_hard", "ln2", "shared hard gate"), ("paired/seed0/iti_fine", "ln2", "shared hard gate"),
           ("iti_heads/seed0", "ITI-c's heads", "shared hard gate")) if seed == 0 else ((f"paired/seed{seed}/iti", "ln2", "shared hard gate"),)),
        (f"lineas_heads/toxicity/shift/seed{seed}", "LinEAS's heads, shift only", "shared hard gate"),  # stop 39
        (f"lineas_heads/toxicity/shift/extended/seed{seed}", "LinEAS's heads, shift only", "shared hard gate"),  # stop 40: 8, 12
        (f"lineas_heads/toxicity/shift/fine/seed{seed}", "LinEAS's heads, shift only", "shared hard gate"),  # stop 42: 1.25, 1.75
        (f"lineas_heads/toxicity/affine/seed{seed}", "LinEAS's heads", "shared hard gate"),
        (f"paired/seed{seed}/iti_mid", "ln2", "shared hard gate"))  # stop 43: ITI-c at 0.3, 0.4
       for seed in SEEDS},
}  # fmt: skip
VIEWS = [(0.05, None), (0.10, None), (0.25, None), (0.10, 0.10), (0.10, 0.25), (0.10, 0.50)]


def main() -> None:
    lines = ["# The ranking across fit draws (48 held-out prompts)", "", "`python results/gate/fit_draws.py` (its docstring says "
             "what each fit is). 48 held-out prompts x 2 samples, 95% intervals over prompts; lower is better. Bold: the lowest "
             "in the column; †: the interval lies wholly above the bold one's. A fit's table holds only the methods run on it.", ""]  # fmt: skip
    for (concept, fit), runs in FITS.items():
        if not any((Path(t.format(root=ROOT, concept=concept)) / "comparison.csv").exists() for t, _, _ in runs):
            continue  # not run yet
        table = rows(concept, runs, set())
        lines += [f"## {concept}, {fit}", "", *standings(table, VIEWS), ""]
    (HERE / "FIT_DRAWS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
