"""What every ``lineas-tl`` command shares: one-line errors, prompt files, model loading, option parsing."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from typer.core import TyperGroup

WORKFLOW = ("fit", "generate", "calibrate", "compare", "export", "info")
"""Commands in the order a user meets them; the others follow in the order they were added."""


class WorkflowGroup(TyperGroup):
    """Lists the commands in workflow order (:data:`WORKFLOW`) in ``lineas-tl --help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(self.commands)
        return [n for n in WORKFLOW if n in names] + [n for n in names if n not in WORKFLOW]


app = typer.Typer(
    name="lineas-tl",
    cls=WorkflowGroup,
    help="LinEAS activation steering for TransformerLens models: fit, generate, calibrate, compare, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from lineas_tl import __version__

        typer.echo(f"lineas-tl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """LinEAS activation steering for TransformerLens models: fit, generate, calibrate, compare, export."""

F = TypeVar("F", bound=Callable[..., Any])

# Errors that mean "bad input": shown as one line, exit status 1.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    OSError,
    RuntimeError,
    FloatingPointError,
    ImportError,
)


class CLIError(ValueError):
    """Bad command-line input, reported as one line."""


def _one_line(err: BaseException) -> str:
    msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    msg = " ".join(msg.split()) or type(err).__name__
    return msg


def friendly(fn: F) -> F:
    """Run a command, turning library errors into ``error: ...`` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except _USER_ERRORS as err:
            if os.environ.get("LINEAS_TL_DEBUG"):
                raise
            typer.echo(f"error: {_one_line(err)}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- helpers
def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Read prompts from a text file (one per line, blank lines ignored) or a ``.json`` list."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    if p.is_dir():
        raise CLIError(f"prompt file {str(p)!r} is a directory; pass a text or .json file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CLIError(f"{p} is not valid JSON ({err})") from err
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise CLIError(f"{p} must hold a JSON list of strings")
        prompts = [x for x in data if x.strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"prompt file {str(p)!r} holds no prompts")
    return prompts


def load_model(name_or_dir: str, device: str | None = None) -> Any:
    """Load a model for the CLI through :func:`lineas_tl.models.load` (offline)."""
    from lineas_tl import models

    with quiet_stdout():
        return models.load(name_or_dir, device=device)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Load quietly: no weight-loading bars, and any printed notice goes to stderr, not stdout."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        hf_logging = None
    was_enabled = hf_logging.is_progress_bar_enabled() if hf_logging is not None else False
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if hf_logging is not None and was_enabled:
            hf_logging.enable_progress_bar()


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(params: list[str] | None, flag: str = "--param") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def check_hparams(method: str, hparams: dict[str, Any]) -> None:
    from lineas_tl.methods import METHODS

    if method not in METHODS:
        raise CLIError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    params = inspect.signature(METHODS[method]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise CLIError(
            f"method {method!r} has no hyper-parameter {', '.join(map(repr, unknown))} "
            f"(it takes: {', '.join(accepted) or 'none'})"
        )


def parse_strength(text: str) -> float | str:
    if text.strip().lower() == "calibrated":
        return "calibrated"
    try:
        value = float(text)
    except ValueError as err:
        raise CLIError(f"--strength expects a number or 'calibrated', got {text!r}") from err
    if not math.isfinite(value):
        raise CLIError(f"--strength must be finite (0 = off, 1 = the fitted map), got {text!r}")
    return value


def parse_strengths(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise CLIError(f"--strengths expects numbers separated by commas, got {text!r}") from err
    if not values:
        raise CLIError("--strengths is empty")
    if not all(math.isfinite(v) for v in values):
        raise CLIError(f"--strengths must be finite numbers, got {text!r}")
    return values


def deprecated(message: str) -> None:
    """A deprecation notice on stderr (the CLI's users do not see Python warnings)."""
    typer.echo(f"warning: {message} (deprecated; it will be removed in the next release)", err=True)


def split_list(values: list[str] | None, flag: str) -> list[str]:
    """A repeated option's values; a comma-separated value (the older style) is split, with a notice."""
    out: list[str] = []
    for value in values or []:
        if "," in value:
            deprecated(f"{flag} {value!r}: comma-separated lists; repeat {flag} for each value instead")
            out.extend(v.strip() for v in value.split(",") if v.strip())
        else:
            out.append(value.strip())
    return out


DEFAULT_MODEL = "smollm2-135m"


def steerer_path(option: Path | None, positional: Path | None, command: str) -> Path:
    """The steerer directory from ``--steerer`` (or the deprecated positional argument)."""
    if option is not None and positional is not None and option != positional:
        raise CLIError(f"two steerers given ({positional} and --steerer {option}); pass --steerer DIR once")
    if option is None and positional is not None:
        deprecated(f"`lineas-tl {command} DIR`: pass the steerer as --steerer DIR")
    path = option if option is not None else positional
    if path is None:
        raise CLIError("pass the steerer's directory with --steerer DIR")
    return path


def steerer_model(meta: dict[str, Any], model: str | None) -> str:
    """``--model`` if given, else the model the steerer was fitted on (recorded when it was loaded by
    name or directory), else the embedded default."""
    if model is not None:
        return model
    name = (meta.get("model") or {}).get("name")
    return str(name) if name else DEFAULT_MODEL


# ----------------------------------------------------------------------------- commands
_MODEL_HELP = (
    "Embedded model name (smollm2-135m: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)), a .gguf file, "
    "or a local Hugging Face model directory; nothing is downloaded."
)
ModelOpt = Annotated[str, typer.Option("--model", "-m", help=_MODEL_HELP)]
SteererModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help=_MODEL_HELP + " Default: the model the steerer was fitted on (smollm2-135m if unknown)."),
]
SteererOpt = Annotated[Path | None, typer.Option("--steerer", "-s", help="Directory of a saved steerer.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device (default: TransformerLens' choice).")]


