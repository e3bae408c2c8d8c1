"""``lineas-tl export`` and ``lineas-tl calibrate``: take a fitted steerer to where models are served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lineas_tl.cli_support import (
    CLIError,
    DeviceOpt,
    SteererModelOpt,
    app,
    friendly,
    load_model,
    parse_strength,
    quiet_stdout,
    read_prompts,
    steerer_model,
)


@app.command()
@friendly
def export(
    steerer: Annotated[Path, typer.Option("--steerer", "-s", help="Directory of a saved steerer.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New file (gguf, control-vector) or directory (hf).")],
    model: SteererModelOpt = None,
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="gguf (default, as in Python: weights folded, llama.cpp/Ollama), control-vector, or hf."
        ),
    ] = "gguf",
    strength: Annotated[str, typer.Option(help="Steering strength to fold in: a number or 'calibrated'.")] = "1.0",
    inverse: Annotated[bool, typer.Option(help="Fold the inverse map (induce the concept).")] = False,
    source_gguf: Annotated[
        Path | None, typer.Option(help="gguf: the GGUF the model was loaded from (default: the one --model names).")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Write a saved steerer for serving: a GGUF with the steering folded in, a control vector, or an HF model."""
    from lineas_tl.export import FORMATS
    from lineas_tl.export import export as export_steerer
    from lineas_tl.io import read_metadata
    from lineas_tl.steerer import HookedSteerer

    if format not in FORMATS:
        raise CLIError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    value = parse_strength(strength)
    if source_gguf is not None and not source_gguf.is_file():
        raise CLIError(f"--source-gguf {str(source_gguf)!r} does not exist")
    meta = read_metadata(steerer)
    lm = load_model(steerer_model(meta, model), device)
    st = HookedSteerer.load(steerer, lm)
    with quiet_stdout():
        path = export_steerer(st, out, format, value, inverse=inverse, source=source_gguf)
    shown = value if isinstance(value, str) else f"{value:g}"
    typer.echo(f"wrote the steered model (strength {shown}{', inverse' if inverse else ''}) as {format} to {path}")


@app.command()
@friendly
def calibrate(
    steerer: Annotated[Path, typer.Option("--steerer", "-s", help="Directory of a saved steerer (updated in place).")],
    model: SteererModelOpt = None,
    texts: Annotated[
        Path | None,
        typer.Option(help="Calibration texts (one per line, or .json). Default: 32 held-out Wikipedia paragraphs."),
    ] = None,
    max_ppl_increase: Annotated[float, typer.Option(help="Perplexity budget: 0.05 = at most +5%.")] = 0.05,
    max_strength: Annotated[
        float, typer.Option(help="Largest strength considered (0 < s; above 1 extrapolates, e.g. 2).")
    ] = 1.0,
    inverse: Annotated[bool, typer.Option(help="Calibrate the inverse map (inducing the concept).")] = False,
    device: DeviceOpt = None,
) -> None:
    """Find the largest strength within a perplexity budget; save it with the steerer (--strength calibrated)."""
    from lineas_tl.io import read_metadata
    from lineas_tl.steerer import HookedSteerer

    meta = read_metadata(steerer)
    if texts is not None:
        calibration_texts = read_prompts(texts)
    else:
        from lineas_tl.concepts import reference_text

        calibration_texts = reference_text(n=32, seed=0, max_words=64)
    lm = load_model(steerer_model(meta, model), device)
    st = HookedSteerer.load(steerer, lm)
    st.calibrate(calibration_texts, max_ppl_increase, max_strength=max_strength, inverse=inverse)
    st.save(steerer)
    rec = st.calibration_
    assert rec is not None
    typer.echo(
        f"calibrated strength {rec.strength:.4g}: perplexity {rec.perplexity:.4g} vs {rec.base_perplexity:.4g} "
        f"unsteered (budget +{100 * max_ppl_increase:g}%, {rec.n_texts} texts); saved to {steerer}"
    )
