"""``lineas-tl info`` and ``lineas-tl frontier``: read a saved steerer or a saved comparison table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lineas_tl.cli_support import CLIError, SteererOpt, app, deprecated, friendly, split_list, steerer_path


@app.command()
@friendly
def frontier(
    table_arg: Annotated[
        Path | None, typer.Argument(metavar="[TABLE]", help="Deprecated: pass --table FILE.", show_default=False)
    ] = None,
    table_opt: Annotated[
        Path | None, typer.Option("--table", "-t", help="A comparison.csv written by `compare` or `demo`.")
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(help="Perplexity budget, e.g. 0.05 for +5% (repeatable; default 0.05, 0.1 and 0.25)."),
    ] = None,
    select: Annotated[
        str, typer.Option(help="best: the lowest score within the budget; calibrated: the strongest strength before "
                          "the first over it (chosen by perplexity alone).")  # fmt: skip
    ] = "best",
    column: Annotated[str, typer.Option(help="score_out (held-out prompts) or score_in (fit prompts).")] = "score_out",
) -> None:
    """Summarise a saved comparison table again: each method's score within perplexity budgets."""
    import pandas as pd

    from lineas_tl import evaluate

    if table_opt is not None and table_arg is not None and table_opt != table_arg:
        raise CLIError("two tables given; pass --table FILE once")
    if table_opt is None and table_arg is not None:
        deprecated("`lineas-tl frontier FILE`: pass the table as --table FILE")
    table = table_opt if table_opt is not None else table_arg
    if table is None:
        raise CLIError("pass the comparison table with --table FILE")
    budgets = [float(b) for b in split_list(budget, "--budget")] if budget else None
    if not table.is_file():
        raise CLIError(f"{table} is not a file; pass the comparison.csv of a `compare` or `demo` run")
    summary = evaluate.frontier_summary(
        pd.read_csv(table), tuple(budgets) if budgets else evaluate.DEFAULT_BUDGETS, column, select=select
    )
    typer.echo(evaluate.format_frontier(summary).to_string(index=False))


@app.command()
@friendly
def info(
    steerer_arg: Annotated[
        Path | None, typer.Argument(metavar="[DIR]", help="Deprecated: pass --steerer DIR.", show_default=False)
    ] = None,
    steerer_opt: SteererOpt = None,
) -> None:
    """Describe a saved steerer: method, sites, hyper-parameters, the model it was fitted on."""
    from lineas_tl.io import read_metadata

    steerer = steerer_path(steerer_opt, steerer_arg, "info")
    meta = read_metadata(steerer)
    maps = meta["maps"]
    model = meta["model"]
    typer.echo(f"method:      {meta.get('method')}")
    typer.echo(f"fitted on:   {model.get('name') or model.get('description') or model.get('class')} {model.get('fingerprint')}")
    typer.echo(f"saved by:    lineas-tl {meta.get('lineas_tl_version')} on {meta.get('created')}")
    pooling = f"{meta.get('pooling')}, pool_bos={meta.get('pool_bos', False)}, chat_pool={meta.get('chat_pool', 'user')}"
    typer.echo(f"pooling:     {pooling}")
    typer.echo(f"hparams:     {json.dumps(meta.get('hparams', {}))}")
    if meta.get("hparams_given") is not None:
        typer.echo(f"  given:     {json.dumps(meta['hparams_given'])}")
    cal = meta.get("calibration")
    if cal:
        typer.echo(
            f"calibrated:  strength {cal['strength']:.4g} within +{100 * cal['max_ppl_increase']:g}% perplexity "
            f"({cal['perplexity']:.4g} vs {cal['base_perplexity']:.4g})"
        )
    typer.echo(f"maps:        {len(maps)} sites")
    for site, m in maps.items():
        typer.echo(f"  {site}  {m.get('kind')} {tuple(m.get('feature_shape', ()))}")
