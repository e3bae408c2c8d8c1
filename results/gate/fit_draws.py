"""The ranking across fit draws: two seeds, and the sentiment concept's 8 fit frames against 32.

Stop 30 explained gated LinEAS's last place on sentiment by its fit frames: fitted on seed 0's draw
of the concept's 8 frames, plain LinEAS moved its fit prompts and left the 48 held-out ones where
they were. This ranks each fit's runs on the same 48 held-out prompts, one table per fit: seed 0 and
seed 1 (another draw of the fit, control and reference prompts and of the sampling seeds), each
with the concept's fit pools and with `varied_frames.py`'s pools (24 more frame pairs). Cells as
in `STANDINGS_48.md`; views: within +5/+10/+25% reference perplexity, and within +10% with the
continuations within +50%. Writes `FIT_DRAWS.md`.

    python results/gate/fit_draws.py
"""

from __future__ import annotations

from standings import HERE, rows, standings

RUNS = "{root}/gate/"
FITS = {  # (concept, fit) -> the runs read, as standings.RUNS_48
    ("toxicity", "seed 0"): (("shared_hard_default_48", "ln2", "shared hard gate"), ("plain_default_48", "ln2", None),
                             ("per_site_outputs_48", "outputs", "per-site gate"), ("actadd_48", "outputs", "per-site gate")),
    ("toxicity", "seed 1"): (("shared_hard_default_48/seed1", "ln2", "shared hard gate"), ("plain_default_48/seed1", "ln2", None)),
    ("sentiment", "seed 0, the concept's 8 frames"): (("shared_hard_default_48", "ln2", "shared hard gate"), ("plain_default_48", "ln2", None),
                                                      ("per_site_outputs_48", "outputs", "per-site gate"), ("actadd_48", "outputs", "per-site gate")),
    ("sentiment", "seed 1, the concept's 8 frames"): (("shared_hard_default_48/seed1", "ln2", "shared hard gate"), ("plain_default_48/seed1", "ln2", None)),
    ("sentiment", "seed 0, 32 frames"): (("varied_frames", "ln2", "shared hard gate"), ("varied_frames/baselines", "outputs", "per-site gate")),
    ("sentiment", "seed 1, 32 frames"): (("varied_frames/seed1", "ln2", "shared hard gate"),),
}  # fmt: skip
VIEWS = [(0.05, None), (0.10, None), (0.25, None), (0.10, 0.50)]


def main() -> None:
    lines = ["# The ranking across fit draws (48 held-out prompts)", "", "`python results/gate/fit_draws.py` (its docstring says "
             "what each fit is). 48 held-out prompts x 2 samples, 95% intervals over prompts; lower is better. Bold: the lowest "
             "in the column; †: the interval lies wholly above the bold one's. A fit's table holds only the methods run on it.", ""]  # fmt: skip
    for (concept, fit), runs in FITS.items():
        runs = tuple((RUNS + folder + "/{concept}", sites, gate) for folder, sites, gate in runs)
        if not any((HERE / folder / concept / "comparison.csv").exists() for folder, _, _ in FITS[concept, fit]):
            continue  # not run yet
        table = rows(concept, runs, set())
        lines += [f"## {concept}, {fit}", "", *standings(table, VIEWS), ""]
    (HERE / "FIT_DRAWS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
