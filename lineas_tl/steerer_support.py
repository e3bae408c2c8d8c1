"""What :class:`~lineas_tl.steerer.HookedSteerer` leans on: the not-fitted error, the hook list that is
also a context manager, and the record of the hyper-parameters a fit really used."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, SupportsIndex, overload

__all__ = ["NotFittedError", "HookList", "resolve_hparams"]


class NotFittedError(ValueError, AttributeError, RuntimeError):
    """A fitted attribute (``maps_``, ``history_``, ...) or method used before :meth:`fit` or ``load``.

    As scikit-learn's ``NotFittedError``, it is both a ``ValueError`` and an ``AttributeError``, so
    ``hasattr(steerer, "maps_")`` is False on an unfitted steerer. It is also a ``RuntimeError``,
    what earlier releases raised, so that existing ``except RuntimeError`` clauses still catch it.
    """


_LIST_USE = (
    "using steerer.hooks(...) as a list of (site, hook) pairs is deprecated and will be removed in the "
    "next release: call steerer.fwd_hooks(...) for the list (e.g. model.hooks(fwd_hooks=steerer.fwd_hooks(0.5))), "
    "or use `with steerer.hooks(0.5):` as a context manager, like TransformerLens's model.hooks()"
)


class HookList(list):  # type: ignore[type-arg]
    """What :meth:`HookedSteerer.hooks` returns: a context manager that attaches the maps to the
    model (``with steerer.hooks(0.5): logits = model(tokens)``), as TransformerLens's
    ``model.hooks()`` does, and removes them on exit, even on error.

    For one release it is also the list of ``(site, hook)`` pairs it used to be; reading it as a
    list emits a ``DeprecationWarning`` (use :meth:`HookedSteerer.fwd_hooks` for the list).
    """

    def __init__(self, pairs: list[tuple[str, Callable[..., Any]]], model: Any):
        super().__init__(pairs)
        self._model = model
        self._context: Any = None

    def pairs(self) -> list[tuple[str, Callable[..., Any]]]:
        """The ``(site, hook)`` pairs, without the deprecation warning."""
        return list(list.__iter__(self))

    def __enter__(self) -> Any:
        if self._context is not None:
            raise RuntimeError("these hooks are already attached; call steerer.hooks(...) again for a new context")
        context = self._model.hooks(fwd_hooks=self.pairs())
        entered = context.__enter__()
        self._context = context
        return entered

    def __exit__(self, *exc: Any) -> Any:
        context, self._context = self._context, None
        return context.__exit__(*exc) if context is not None else None

    # Reading it as a list: deprecated.
    def _warn(self) -> None:
        warnings.warn(_LIST_USE, DeprecationWarning, stacklevel=3)

    def __iter__(self) -> Iterator[tuple[str, Callable[..., Any]]]:
        self._warn()
        return list.__iter__(self)

    def __len__(self) -> int:
        self._warn()
        return list.__len__(self)

    @overload
    def __getitem__(self, index: SupportsIndex) -> tuple[str, Callable[..., Any]]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, Callable[..., Any]]]: ...
    def __getitem__(self, index: Any) -> Any:
        self._warn()
        return list.__getitem__(self, index)


def resolve_hparams(method: Callable[..., Any], given: Mapping[str, Any], history: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter a fit used, defaults included: ``method``'s keyword defaults, then what
    the user ``given``, then what the method reports it resolved (a ``"config"`` dict in its history,
    as LinEAS's presets fill in, or a history entry of the same name for a default of None, such as
    ITI's ``k`` or ActAdd's ``layer`` and ``coefficient``)."""
    params = inspect.signature(method).parameters
    out: dict[str, Any] = {
        name: p.default
        for name, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
    out.update(given)
    config = history.get("config")
    if isinstance(config, Mapping):
        out.update(config)
    for name, value in list(out.items()):
        if value is None and name in history and not isinstance(history[name], (dict, list)):
            out[name] = history[name]
    return out
