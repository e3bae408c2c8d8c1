"""The LinEAS paper's other claims, measured on our model: sparsity, data efficiency, the paper's
operating points next to the frontier view, and held-out W2 per site.

    python results/paper_claims/run.py --out results/paper_claims            # full: hours on CPU
    python results/paper_claims/run.py --out /tmp/paper_claims --quick       # a few minutes on CPU

Protocol (every number in the outputs comes from here):

- fit prompts are drawn from the concept's source/target pools, minus ``n_heldout`` prompts of
  each pool kept out of every fit (for the held-out W2); the concept's ``eval_prompts`` (scored
  continuations) are disjoint from both pools, so no fit prompt is ever evaluated;
- perplexity texts and calibration texts are two disjoint halves of ``reference_text``: a steerer
  is calibrated on one half (largest strength within ``budget``, +10% by default) and its
  perplexity reported on the other;
- **data efficiency**: for each N and seed, LinEAS, Linear-AcT, Mean-AcT and ITI-c are fitted on
  the same N source and N target prompts and scored at their calibrated strength; intervals are
  bootstrap 95% over prompts (per fit) and over seeds (per N);
- **held-out W2**: per site, the pooled W2² between held-out source prompts (steered at strength 1)
  and held-out target prompts (unsteered), divided by the same without steering (lower is better),
  at the LinEAS steerer's sites, for every method;
- **sparsity**: LinEAS at N = ``sparsity_n`` with gamma rising until the support collapses: share of
  coordinates and of sites kept, score and perplexity at the calibrated strength and at strength 1;
- **operating points**: LinEAS, Linear-AcT and CAA at strength 1 and ITI-c at 0.5 (where the paper
  reports them), next to each at its calibrated strength (the frontier view).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

PAPER_STRENGTH = {"lineas": 1.0, "linear_act": 1.0, "caa": 1.0, "iti": 0.5}
COLLAPSED = 1e-3  # share of coordinates kept below which the support has collapsed


@dataclass(frozen=True)
class Config:
    """What one run measures; :meth:`quick` is the few-minute CPU check."""

    model: str = "smollm2-135m"
    concept: str = "toxicity"
    ns: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("lineas", "linear_act", "mean_act", "iti")
    gammas: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
    sparsity_n: int = 32
    table_n: int = 32
    budget: float = 0.10
    n_heldout: int = 16
    n_eval: int = 80
    n_reference: int = 32
    reference_words: int = 60
    max_new_tokens: int = 32
    n_samples: int = 3
    greedy: bool = False
    calibration_grid: int = 8
    bisect_steps: int = 3
    lineas: dict[str, Any] = field(default_factory=dict)
    sites: str | None = None

    @classmethod
    def quick(cls) -> Config:
        return cls(ns=(4, 8), seeds=(0,), gammas=(0.0, 1e-1, 10.0), sparsity_n=8, table_n=8, n_heldout=8,
                   n_eval=6, n_reference=4, reference_words=30, max_new_tokens=12, n_samples=1, greedy=True,
                   calibration_grid=2, bisect_steps=1, lineas={"steps": 8})  # fmt: skip


class Bench:
    """The model, the prompt splits and the measurements shared by every experiment."""

    def __init__(self, cfg: Config):
        import torch

        from lineas_tl import models
        from lineas_tl.concepts import get_concept, reference_text
        from lineas_tl.evaluate.perplexity import perplexity
        from lineas_tl.evaluate.sampling import GenerationConfig

        self.cfg, self.torch, self.perplexity = cfg, torch, perplexity
        self.model = models.load(cfg.model)
        self.concept = get_concept(cfg.concept)
        pools = []
        for pool in (self.concept.source_prompts, self.concept.target_prompts):
            pool = list(pool)
            random.Random(1234).shuffle(pool)
            pools.append(pool)
        h = cfg.n_heldout
        self.fit_pool = (pools[0][h:], pools[1][h:])
        self.heldout = (pools[0][:h], pools[1][:h])
        self.eval_prompts = self.concept.eval_prompts[: cfg.n_eval]
        assert not set(self.eval_prompts) & (set(pools[0]) | set(pools[1])), "evaluation prompts leak into the pools"
        texts = reference_text(n=2 * cfg.n_reference, seed=0, max_words=cfg.reference_words)
        self.calibration_texts, self.ppl_texts = texts[: cfg.n_reference], texts[cfg.n_reference :]
        self.gen = (GenerationConfig.greedy(cfg.max_new_tokens) if cfg.greedy
                    else GenerationConfig(max_new_tokens=cfg.max_new_tokens, n_samples=cfg.n_samples))  # fmt: skip
        self.base_ppl = perplexity(self.model, self.ppl_texts)
        self.base_score = self.measure(None, 0.0)
        self.w2_sites: list[str] = []
        self._w2_base: dict[str, float] = {}
        self._target_acts: dict[str, Any] = {}

    def split(self, n: int, seed: int) -> tuple[list[str], list[str]] | None:
        """N source and N target prompts from the fit pools (None when a pool is too small)."""
        if n > min(len(p) for p in self.fit_pool):
            return None
        rng = random.Random(seed)
        return rng.sample(self.fit_pool[0], n), rng.sample(self.fit_pool[1], n)

    def fit(self, method: str, data: tuple[list[str], list[str]], seed: int, **extra: Any) -> Any:
        from lineas_tl import HookedSteerer

        kw: dict[str, Any] = {"seed": seed} if method in ("lineas", "iti") else {}
        if method == "lineas":
            kw.update(self.cfg.lineas, warn=False, **extra)
        return HookedSteerer(self.model, sites=self.cfg.sites).fit(*data, method=method, progress=False, **kw)

    def calibrated(self, steerer: Any) -> float:
        steerer.calibrate(self.calibration_texts, self.cfg.budget, grid=self.cfg.calibration_grid,
                          bisect_steps=self.cfg.bisect_steps)  # fmt: skip
        return float(steerer.calibrated_strength_)

    def measure(self, steerer: Any, strength: float) -> dict[str, float]:
        """Concept score (95% interval over prompts) and perplexity ratio at ``strength``."""
        from lineas_tl.evaluate.sampling import continuations
        from lineas_tl.evaluate.scoring import concept_score

        texts = continuations(self.model, self.eval_prompts, steerer, strength, config=self.gen, seed=0)
        s = concept_score(texts, self.concept.scorer, per_prompt=self.gen.n_samples, seed=0)
        ppl = self.perplexity(self.model, self.ppl_texts, steerer=steerer, strength=strength) if steerer else None
        ratio = ppl / self.base_ppl if ppl is not None else 1.0
        return {"strength": strength, "score": s.mean, "score_lo": s.mean_ci[0], "score_hi": s.mean_ci[1], "ppl_ratio": ratio}

    def w2(self, steerer: Any) -> dict[str, float]:
        """Per site: held-out pooled W2² steered (strength 1) / unsteered, at ``w2_sites``."""
        from lineas_tl import collect_activations, global_loss

        def acts(prompts: list[str]) -> dict[str, Any]:
            return {k: v.flatten(1) for k, v in collect_activations(self.model, prompts, self.w2_sites, progress=False).items()}

        if not self._w2_base:
            self._target_acts = acts(self.heldout[1])
            self._w2_base = dict(global_loss(acts(self.heldout[0]), self._target_acts)[1])
        with steerer.steer(1.0):
            _, per_site = global_loss(acts(self.heldout[0]), self._target_acts)
        return {s: float(per_site[s]) / max(self._w2_base[s], 1e-30) for s in self.w2_sites}


def support(steerer: Any) -> tuple[float, float]:
    """Shares of coordinates and of sites moved (|omega - 1| or |b| above 1e-5)."""
    kept = total = sites = 0
    for m in steerer.maps_.values():
        moved = ((m.weight - 1).abs() > 1e-5) | (m.bias.abs() > 1e-5)
        kept, total, sites = kept + int(moved.sum()), total + moved.numel(), sites + bool(moved.any())
    return kept / total, sites / len(steerer.maps_)


def data_efficiency(bench: Bench, log: Any) -> list[dict[str, Any]]:
    rows = []
    for n in bench.cfg.ns:
        for seed in bench.cfg.seeds:
            data = bench.split(n, seed)
            if data is None:
                log(f"N={n}: skipped, the fit pools hold {min(len(p) for p in bench.fit_pool)} prompts")
                break
            for method in bench.cfg.methods:
                start = time.perf_counter()
                steerer = bench.fit(method, data, seed)
                if method == "lineas" and not bench.w2_sites:
                    bench.w2_sites = list(steerer.sites)
                lam = bench.calibrated(steerer)
                per_site = bench.w2(steerer)
                row = {"n": n, "seed": seed, "method": method, **bench.measure(steerer, lam),
                       "w2_ratio": float(np.mean(list(per_site.values()))), "w2_per_site": per_site,
                       "seconds": time.perf_counter() - start}  # fmt: skip
                rows.append(row)
                log(f"N={n} seed={seed} {method}: strength {lam:.3g} score {row['score']:.3f} ppl x{row['ppl_ratio']:.3f} W2 {row['w2_ratio']:.3f}")
    return rows


def sparsity(bench: Bench, log: Any) -> list[dict[str, Any]]:
    rows = []
    data = bench.split(bench.cfg.sparsity_n, 0)
    assert data is not None, "sparsity_n exceeds the fit pools"
    for gamma in sorted(bench.cfg.gammas):
        steerer = bench.fit("lineas", data, 0, gamma=gamma)
        coords, sites = support(steerer)
        lam = bench.calibrated(steerer)
        at_cal, at_one = bench.measure(steerer, lam), bench.measure(steerer, 1.0)
        rows.append({"gamma": gamma, "coords_kept": coords, "sites_kept": sites, **at_cal,
                     "score_at_1": at_one["score"], "ppl_ratio_at_1": at_one["ppl_ratio"]})  # fmt: skip
        log(f"gamma={gamma:g}: {100 * coords:.2f}% coordinates, {100 * sites:.0f}% sites; calibrated {lam:.3g} "
            f"score {at_cal['score']:.3f} ppl x{at_cal['ppl_ratio']:.3f}; at 1: {at_one['score']:.3f} x{at_one['ppl_ratio']:.3f}")
        if coords < COLLAPSED:
            break
    return rows


def operating_points(bench: Bench, log: Any) -> list[dict[str, Any]]:
    rows = []
    data = bench.split(bench.cfg.table_n, 0)
    assert data is not None, "table_n exceeds the fit pools"
    for method, paper_strength in PAPER_STRENGTH.items():
        steerer = bench.fit(method, data, 0)
        lam = bench.calibrated(steerer)
        for view, strength in (("paper", paper_strength), ("calibrated", lam)):
            rows.append({"method": method, "view": view, **bench.measure(steerer, strength)})
            log(f"{method} {view}: strength {strength:.3g} score {rows[-1]['score']:.3f} ppl x{rows[-1]['ppl_ratio']:.3f}")
    return rows


def summarise(rows: list[dict[str, Any]]) -> Any:
    """Per (method, N): mean over seeds of the score, perplexity and W2 ratios, with a 95% interval
    over seeds (``*_lo``/``*_hi``) and, for the score, the per-fit interval over prompts averaged
    over seeds (``score_prompts_lo``/``score_prompts_hi``)."""
    import pandas as pd

    from lineas_tl.evaluate.bootstrap import bootstrap_ci

    out = []
    for (method, n), g in pd.DataFrame(rows).groupby(["method", "n"], sort=False):
        entry: dict[str, Any] = {"method": method, "n": n, "seeds": len(g)}
        for col in ("score", "ppl_ratio", "w2_ratio", "strength"):
            lo, hi = bootstrap_ci(g[col].to_numpy()) if len(g) > 1 else (math.nan, math.nan)
            entry.update({col: g[col].mean(), f"{col}_lo": lo, f"{col}_hi": hi})
        # the interval over prompts of each fit, averaged over seeds (the only one with a single seed)
        entry.update(score_prompts_lo=g["score_lo"].mean(), score_prompts_hi=g["score_hi"].mean())
        out.append(entry)
    return pd.DataFrame(out)


def plots(out: Path, summary: Any, sparse: list[dict[str, Any]], table: list[dict[str, Any]], base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, g in summary.groupby("method", sort=False):
        for ax, col in zip(axes, ("score", "ppl_ratio", "w2_ratio")):
            err = np.nan_to_num(np.abs(np.stack([g[col] - g[f"{col}_lo"], g[f"{col}_hi"] - g[col]])))
            ax.errorbar(g["n"], g[col], yerr=err, marker="o", capsize=3, label=method)
    axes[0].axhline(base, color="grey", ls=":", label="unsteered")
    ns = sorted(summary["n"].unique())
    for ax, title in zip(axes, ("score at the calibrated strength", "perplexity / unsteered", "held-out W2 steered / unsteered")):
        ax.set_xscale("log", base=2)
        ax.set(xticks=ns, xticklabels=[str(n) for n in ns], xlabel="N prompts per set", title=title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=120)
    if sparse:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        g = [max(r["gamma"], 1e-5) for r in sparse]
        a.plot(g, [100 * r["coords_kept"] for r in sparse], "o-", label="% coordinates")
        a.plot(g, [100 * r["sites_kept"] for r in sparse], "s-", label="% sites")
        b.plot(g, [r["score"] for r in sparse], "o-", label="score, calibrated")
        b.plot(g, [r["score_at_1"] for r in sparse], "s-", label="score, strength 1")
        for ax, title in ((a, "support"), (b, "concept score")):
            ax.set(xscale="log", xlabel="gamma (0 drawn at 1e-5)", title=title)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "sparsity.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for view, marker in (("paper", "o"), ("calibrated", "^")):
        pts = [r for r in table if r["view"] == view]
        ax.scatter([r["ppl_ratio"] for r in pts], [r["score"] for r in pts], marker=marker, label=view)
        for r in pts:
            ax.annotate(r["method"], (r["ppl_ratio"], r["score"]), fontsize=8)
    ax.set(xlabel="perplexity / unsteered", ylabel="score (lower: less of the concept)", title="operating points")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "operating_points.png", dpi=120)


def report(out: Path, cfg: Config, bench: Bench, summary: Any, sparse: list[dict[str, Any]], table: list[dict[str, Any]],
           command: str, seconds: float) -> None:  # fmt: skip
    import pandas as pd

    lines = [
        f"# Paper claims on {cfg.model}, concept {cfg.concept}", "",
        f"Command: `{command}` ({seconds / 60:.1f} min). Unsteered: score {bench.base_score['score']:.3f} "
        f"[{bench.base_score['score_lo']:.3f}, {bench.base_score['score_hi']:.3f}], perplexity {bench.base_ppl:.2f}. "
        f"Budget +{100 * cfg.budget:.0f}%; generation: {bench.gen.describe()}; LinEAS: {cfg.lineas or 'the default fit'}, "
        f"sites {cfg.sites or 'default'}.", "",
        "## Data efficiency (calibrated strength; 95% intervals over seeds, and over prompts)", "",
        summary.round(4).to_markdown(index=False), "",
        "## Sparsity", "", pd.DataFrame(sparse).round(4).to_markdown(index=False), "",
        "## Operating points: the paper's strengths next to the calibrated ones", "",
        pd.DataFrame(table).round(4).to_markdown(index=False), "",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/paper_claims"))
    parser.add_argument("--quick", action="store_true", help="a few minutes on CPU: tiny N, one seed, short fits")
    parser.add_argument("--concept", default=None)
    parser.add_argument("--preset", default=None, help="LinEAS preset (default: the library's)")
    parser.add_argument("--sites", default=None, help="site preset for every method, e.g. 'paper'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    if args.concept:
        cfg = replace(cfg, concept=args.concept)
    if args.preset:
        cfg = replace(cfg, lineas={**cfg.lineas, "preset": args.preset})
    if args.sites:
        cfg = replace(cfg, sites=args.sites)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    bench = Bench(cfg)
    log(f"unsteered: score {bench.base_score['score']:.3f}, perplexity {bench.base_ppl:.2f}")
    rows = data_efficiency(bench, log)
    summary = summarise(rows)
    sparse = sparsity(bench, log)
    table = operating_points(bench, log)
    seconds = time.perf_counter() - started
    command = "python results/paper_claims/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"config": asdict(cfg), "command": command, "seconds": seconds, "unsteered": bench.base_score,
               "base_perplexity": bench.base_ppl, "data_efficiency": rows, "sparsity": sparse, "operating_points": table}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    summary.to_csv(args.out / "data_efficiency.csv", index=False)
    plots(args.out, summary, sparse, table, bench.base_score["score"])
    report(args.out, cfg, bench, summary, sparse, table, command, seconds)
    log(f"done: {args.out}/report.md")


if __name__ == "__main__":
    main()
