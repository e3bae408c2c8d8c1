"""The LinEAS paper's other claims, measured on our model: sparsity, data efficiency, the paper's
operating points next to the frontier view, and held-out W2 per site.

    python results/paper_claims/run.py --out results/paper_claims            # full: hours on CPU
    python results/paper_claims/run.py --out /tmp/paper_claims --quick       # a few minutes on CPU
    python results/paper_claims/run.py --out results/paper_claims/toxicity --cpu --sites outputs   # about 2 h on 2 CPU cores

Sites and LinEAS's fit default to the library's (``--sites``, ``--preset``). Until stop 28
(2026-12-05) those were every block's attention and MLP outputs and ``preset="fast"``;
``results/paper_claims/toxicity`` was measured then, and its ``protocol.json`` now says
``"sites": "outputs"`` (``null`` meant the same at the time), so only a run with
``--sites outputs`` adds rows to it. Since stop 28 the default sites are ``blocks.N.ln2.hook_out``
and the fit there ``paper_short``.

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
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from claims_report import plots, report, summarise

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

    @classmethod
    def cpu(cls) -> Config:
        """What fits in about two hours on 2 CPU cores: N up to 32, 48 prompts x 2 samples, 16 + 16
        reference paragraphs, a coarser calibration (resolution 1/16), three gammas."""
        return cls(ns=(4, 8, 16, 32), gammas=(0.0, 1.0, 10.0), n_eval=48, n_samples=2, n_reference=16,
                   calibration_grid=4, bisect_steps=2)  # fmt: skip


Pair = tuple[list[str], list[str]]


def fit_and_heldout(concept: Any, n_heldout: int) -> tuple[Pair, Pair]:
    """The concept's source and target pools, shuffled once: ``(fit pools, held-out prompts)``, the
    first ``n_heldout`` of each pool held out of every fit."""
    pools = []
    for pool in (concept.source_prompts, concept.target_prompts):
        pool = list(pool)
        random.Random(1234).shuffle(pool)
        pools.append(pool)
    h = n_heldout
    return (pools[0][h:], pools[1][h:]), (pools[0][:h], pools[1][:h])


def draw(fit_pool: Pair, n: int, seed: int) -> Pair | None:
    """N source and N target prompts from the fit pools (None when a pool is too small)."""
    if n > min(len(p) for p in fit_pool):
        return None
    rng = random.Random(seed)
    return rng.sample(fit_pool[0], n), rng.sample(fit_pool[1], n)


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
        self.fit_pool, self.heldout = fit_and_heldout(self.concept, cfg.n_heldout)
        self.eval_prompts = self.concept.eval_prompts[: cfg.n_eval]
        pooled = set(self.fit_pool[0] + self.fit_pool[1] + self.heldout[0] + self.heldout[1])
        assert not set(self.eval_prompts) & pooled, "evaluation prompts leak into the pools"
        texts = reference_text(n=2 * cfg.n_reference, seed=0, max_words=cfg.reference_words)
        self.calibration_texts, self.ppl_texts = texts[: cfg.n_reference], texts[cfg.n_reference :]
        self.gen = (GenerationConfig.greedy(cfg.max_new_tokens) if cfg.greedy
                    else GenerationConfig(max_new_tokens=cfg.max_new_tokens, n_samples=cfg.n_samples))  # fmt: skip
        self.base_ppl = perplexity(self.model, self.ppl_texts)
        self.base_score = self.measure(None, 0.0)
        self.w2_sites: list[str] = []
        self._w2_base: dict[str, float] = {}
        self._target_acts: dict[str, Any] = {}
        self._fits: dict[tuple[Any, ...], Any] = {}

    def split(self, n: int, seed: int) -> tuple[list[str], list[str]] | None:
        """N source and N target prompts from the fit pools (None when a pool is too small)."""
        return draw(self.fit_pool, n, seed)

    def fit(self, method: str, n: int, seed: int, **extra: Any) -> Any:
        """``method`` fitted on :meth:`split` (n, seed); kept, so another part of the run reuses it."""
        from lineas_tl import HookedSteerer

        key = (method, n, seed, tuple(sorted(extra.items())))
        if key not in self._fits:
            data = self.split(n, seed)
            assert data is not None, f"N={n} exceeds the fit pools"
            kw: dict[str, Any] = {"seed": seed} if method in ("lineas", "iti") else {}
            if method == "lineas":
                kw.update(self.cfg.lineas, warn=False, **extra)
            self._fits[key] = HookedSteerer(self.model, sites=self.cfg.sites).fit(*data, method=method, progress=False, **kw)
            if method == "lineas" and not self.w2_sites:
                self.w2_sites = list(self._fits[key].sites)
        return self._fits[key]

    def calibrated(self, steerer: Any) -> float:
        steerer.calibrate(self.calibration_texts, self.cfg.budget, grid=self.cfg.calibration_grid,
                          bisect_steps=self.cfg.bisect_steps)  # fmt: skip
        return float(steerer.calibrated_strength_)

    def measure(self, steerer: Any, strength: float) -> dict[str, float]:
        """Concept score (95% interval over prompts) and perplexity ratio at ``strength``."""
        from lineas_tl.evaluate.sampling import continuations
        from lineas_tl.evaluate.scoring import concept_score

        texts = continuations(self.model, self.eval_prompts, steerer, strength, config=self.gen, seed=0)
        s = concept_score(texts, self.concept.lower_is_better(), per_prompt=self.gen.n_samples, seed=0)
        ppl = self.perplexity(self.model, self.ppl_texts, steerer=steerer, strength=strength) if steerer else None
        ratio = ppl / self.base_ppl if ppl is not None else 1.0
        return {"strength": strength, "score": s.mean, "score_lo": s.mean_ci[0], "score_hi": s.mean_ci[1], "ppl_ratio": ratio}

    def w2(self, steerer: Any) -> dict[str, float]:
        """Per site: held-out pooled W2² steered (strength 1) / unsteered, at ``w2_sites``."""
        if not self._w2_base:
            self._target_acts, self._w2_base = w2_reference(self.model, self.w2_sites, *self.heldout)
        return w2_ratios(self.model, steerer, self.w2_sites, self.heldout[0], self._target_acts, self._w2_base)


def site_acts(model: Any, prompts: list[str], sites: list[str]) -> dict[str, Any]:
    """Pooled activations of ``prompts`` at ``sites``, one row per prompt."""
    from lineas_tl import collect_activations

    return {k: v.flatten(1) for k, v in collect_activations(model, prompts, sites, progress=False).items()}


def w2_reference(model: Any, sites: list[str], source: list[str], target: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
    """``(target activations, unsteered pooled W2² of source against target per site)``."""
    from lineas_tl import global_loss

    target_acts = site_acts(model, target, sites)
    return target_acts, dict(global_loss(site_acts(model, source, sites), target_acts)[1])


def w2_ratios(model: Any, steerer: Any, sites: list[str], source: list[str], target_acts: dict[str, Any],
              base: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """Per site: pooled W2² of ``source`` steered at strength 1 against ``target_acts``, over ``base``."""
    from lineas_tl import global_loss

    with steerer.steer(1.0):
        _, per_site = global_loss(site_acts(model, source, sites), target_acts)
    return {s: float(per_site[s]) / max(base[s], 1e-30) for s in sites}


def support(steerer: Any) -> tuple[float, float]:
    """Shares of coordinates and of sites moved (|omega - 1| or |b| above 1e-5)."""
    kept = total = sites = 0
    for m in steerer.maps_.values():
        moved = ((m.weight - 1).abs() > 1e-5) | (m.bias.abs() > 1e-5)
        kept, total, sites = kept + int(moved.sum()), total + moved.numel(), sites + bool(moved.any())
    return kept / total, sites / len(steerer.maps_)


class Rows:
    """Every measured row, appended to ``rows.jsonl`` as it is made: an interrupted run resumes where
    it stopped, and several processes (different ``--parts``, ``--seeds`` or ``--gammas``) can share
    one output folder. A row already there is not measured again."""

    def __init__(self, out: Path, cfg: Config):
        self.path = out / "rows.jsonl"
        protocol = {k: v for k, v in asdict(cfg).items() if k not in ("ns", "seeds", "gammas")}
        saved = out / "protocol.json"
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(protocol, default=float)):
            raise SystemExit(f"{out} holds rows measured with another protocol ({saved}); pass another --out")
        saved.write_text(json.dumps(protocol, indent=1, default=float))
        self.rows: dict[str, dict[str, Any]] = {}
        self.load()

    def load(self) -> None:
        """Read the rows on disk, those other processes appended since included."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["id"]] = row

    def get(self, part: str, **key: Any) -> dict[str, Any] | None:
        return self.rows.get(f"{part}:{json.dumps(key, sort_keys=True)}")

    def add(self, part: str, row: dict[str, Any], **key: Any) -> dict[str, Any]:
        row = {"id": f"{part}:{json.dumps(key, sort_keys=True)}", "part": part, **key, **row}
        self.rows[row["id"]] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        return row

    def part(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["part"] == name]


def data_efficiency(bench: Bench, rows: Rows, log: Any) -> None:
    for n in bench.cfg.ns:
        if bench.split(n, 0) is None:
            log(f"N={n}: skipped, the fit pools hold {min(len(p) for p in bench.fit_pool)} prompts")
            continue
        for seed in bench.cfg.seeds:
            for method in bench.cfg.methods:
                if rows.get("data_efficiency", n=n, seed=seed, method=method):
                    continue
                start = time.perf_counter()
                steerer = bench.fit(method, n, seed)
                lam = bench.calibrated(steerer)
                per_site = bench.w2(steerer)
                row = rows.add("data_efficiency", {**bench.measure(steerer, lam), "w2_ratio": float(np.mean(list(per_site.values()))),
                               "w2_per_site": per_site, "seconds": time.perf_counter() - start}, n=n, seed=seed, method=method)  # fmt: skip
                log(f"N={n} seed={seed} {method}: strength {lam:.3g} score {row['score']:.3f} ppl x{row['ppl_ratio']:.3f} W2 {row['w2_ratio']:.3f}")


def sparsity(bench: Bench, rows: Rows, log: Any) -> None:
    for gamma in sorted(bench.cfg.gammas):
        if (row := rows.get("sparsity", gamma=gamma)) is None:
            start = time.perf_counter()
            steerer = bench.fit("lineas", bench.cfg.sparsity_n, 0, **({"gamma": gamma} if gamma else {}))
            coords, sites = support(steerer)
            lam = bench.calibrated(steerer)
            at_cal, at_one = bench.measure(steerer, lam), bench.measure(steerer, 1.0)
            row = rows.add("sparsity", {"coords_kept": coords, "sites_kept": sites, **at_cal, "score_at_1": at_one["score"],
                           "ppl_ratio_at_1": at_one["ppl_ratio"], "seconds": time.perf_counter() - start}, gamma=gamma)  # fmt: skip
            log(f"gamma={gamma:g}: {100 * coords:.2f}% coordinates, {100 * sites:.0f}% sites; calibrated {lam:.3g} score "
                f"{row['score']:.3f} ppl x{row['ppl_ratio']:.3f}; at 1: {row['score_at_1']:.3f} x{row['ppl_ratio_at_1']:.3f}")
        if row["coords_kept"] < COLLAPSED:
            break


def operating_points(bench: Bench, rows: Rows, log: Any) -> None:
    for method, paper_strength in PAPER_STRENGTH.items():
        if rows.get("operating_points", method=method, view="paper"):
            continue
        steerer = bench.fit(method, bench.cfg.table_n, 0)
        lam = bench.calibrated(steerer)
        for view, strength in (("calibrated", lam), ("paper", paper_strength)):
            row = rows.add("operating_points", bench.measure(steerer, strength), method=method, view=view)
            log(f"{method} {view}: strength {strength:.3g} score {row['score']:.3f} ppl x{row['ppl_ratio']:.3f}")


PARTS = {"data_efficiency": data_efficiency, "sparsity": sparsity, "operating_points": operating_points}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/paper_claims"))
    parser.add_argument("--quick", action="store_true", help="a few minutes on CPU: tiny N, one seed, short fits")
    parser.add_argument("--cpu", action="store_true", help="the scope of about two hours on 2 CPU cores (Config.cpu)")
    parser.add_argument("--concept", default=None)
    parser.add_argument("--preset", default=None, help="LinEAS preset (default: the library's, 'auto')")
    parser.add_argument("--sites", default=None, help="site preset for every method but ITI-c, e.g. 'paper' or 'outputs' "
                        "(default: the library's; 'outputs' before stop 28)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--parts", nargs="*", choices=list(PARTS), default=list(PARTS),
                        help="what to measure (default: all; none: only write the report from rows.jsonl)")  # fmt: skip
    parser.add_argument("--ns", nargs="+", type=int, help="N prompts per set for data efficiency")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds for data efficiency")
    parser.add_argument("--gammas", nargs="+", type=float, help="sparsity strengths")
    parser.add_argument("--n-eval", type=int, help="held-out prompts scored (default 80)")
    parser.add_argument("--samples", type=int, help="sampled continuations per prompt (default 3)")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config.cpu() if args.cpu else Config()
    overrides = {"concept": args.concept, "sites": args.sites, "n_eval": args.n_eval, "n_samples": args.samples,
                 "ns": args.ns and tuple(args.ns), "seeds": args.seeds and tuple(args.seeds),
                 "gammas": args.gammas and tuple(args.gammas)}  # fmt: skip
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.preset:
        cfg = replace(cfg, lineas={**cfg.lineas, "preset": args.preset})
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    rows = Rows(args.out, cfg)
    command = "python results/paper_claims/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with (args.out / "commands.txt").open("a") as f:
        f.write(command + "\n")
    bench = Bench(cfg)
    log(f"unsteered: score {bench.base_score['score']:.3f}, perplexity {bench.base_ppl:.2f}")
    for part in args.parts:
        PARTS[part](bench, rows, log)
    rows.load()  # the report covers every process's rows, not only this one's
    order = {m: i for i, m in enumerate(cfg.methods)}
    de = sorted(rows.part("data_efficiency"), key=lambda r: (order.get(r["method"], 99), r["n"], r["seed"]))
    sparse = sorted(rows.part("sparsity"), key=lambda r: r["gamma"])
    table = sorted(rows.part("operating_points"), key=lambda r: (list(PAPER_STRENGTH).index(r["method"]), r["view"]))
    summary = summarise(de) if de else None
    payload = {"config": asdict(cfg), "commands": (args.out / "commands.txt").read_text().splitlines(),
               "unsteered": bench.base_score, "base_perplexity": bench.base_ppl, "data_efficiency": de,
               "sparsity": sparse, "operating_points": table}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    if summary is not None and sparse and table:
        summary.to_csv(args.out / "data_efficiency.csv", index=False)
        plots(args.out, summary, sparse, table, bench.base_score["score"])
        report(args.out, cfg, bench, summary, sparse, table, payload["commands"])
        log(f"done: {args.out}/report.md")
    else:
        log(f"rows so far in {rows.path}; the report needs every part")


if __name__ == "__main__":
    main()
