"""Turn prompts into model forward passes, whatever the model is.

The steerer, the collector and every fitting method talk to a model only through a
:class:`Runner`: it prepares prompts (tokenises, remembers which positions are real) and runs a
forward pass with a list of TransformerLens hooks attached. Language models use
:class:`LanguageModelRunner`; any model may supply its own runner by defining ``lineas_runner()``
(the diffusers adapter does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from torch import Tensor

from lineas_tl.chat import ChatPool, as_conversations, is_conversation, is_conversation_set, render
from lineas_tl.hooks import GenerationPositions
from lineas_tl.sites import stop_layer

Hook = tuple[str, Callable[..., Any]]


@dataclass
class Batch:
    """One batch of prepared prompts.

    Attributes:
        kwargs: keyword arguments of the model call (e.g. ``input`` and ``attention_mask``).
        mask: ``[batch, pos]`` 1 where a position is a real token (pooling ignores the others), or
            None when every position counts (e.g. the spatial positions of a UNet feature map).
        size: number of prompts in the batch.
    """

    kwargs: dict[str, Any]
    mask: Int[Tensor, "batch pos"] | None
    size: int
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Prepared(Protocol):
    """Prompts ready to be batched: ``len()`` and ``batch(indices)``."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int], padding_side: str = "right") -> Batch: ...


@runtime_checkable
class Runner(Protocol):
    """How a model is fed prompts.

    ``features(site, act)`` says where a site's features start in its activation and their shape
    (see :mod:`lineas_tl.pooling`).
    """

    model: Any

    def prepare(self, prompts: Any) -> Prepared: ...

    def forward(self, batch: Batch, hooks: list[Hook], sites: Sequence[str] | None = None) -> Any: ...

    def features(self, site: str, act: Tensor) -> tuple[int, tuple[int, ...]]: ...


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def input_device(model: Any) -> torch.device:
    """Where token ids go: the device of the model's input embedding (first parameter otherwise).

    On a model split across devices (a ``device_map``) this is the first device of the split,
    which need not be the device of every parameter, nor ``model.cfg.device``.
    """
    for get in (lambda: model.embed, lambda: model.get_input_embeddings()):
        try:
            return next(get().parameters()).device
        except (AttributeError, StopIteration, TypeError, NotImplementedError):
            continue
    return model_device(model)


def get_runner(model: Any, *, pool_bos: bool = False, chat_pool: ChatPool = "user") -> Runner:
    """The runner for ``model``: its own ``lineas_runner()`` if it has one, else a language model's.

    ``pool_bos`` (language models) keeps a leading BOS token in the pooling; ``chat_pool`` says
    which tokens of a conversation are pooled (see :mod:`lineas_tl.chat`).
    """
    if hasattr(model, "lineas_runner"):
        return model.lineas_runner()
    return LanguageModelRunner(model, pool_bos=pool_bos, chat_pool=chat_pool)


class TokenSequences:
    """Token id sequences of unequal lengths, padded per batch on demand.

    ``Batch.mask`` (what pooling reads) is the attention mask, minus a leading ``skip_id`` token
    (the BOS) in sequences that have other tokens, and restricted to ``pool_masks`` when given
    (one ``[pos]`` 0/1 mask per sequence, e.g. the content tokens of a conversation);
    ``kwargs["attention_mask"]`` is the real mask.
    """

    def __init__(
        self,
        sequences: list[Int[Tensor, " pos"]],
        pad_id: int,
        device: torch.device,
        skip_id: int | None = None,
        pool_masks: list[Int[Tensor, " pos"]] | None = None,
    ):
        if pool_masks is not None and [len(m) for m in pool_masks] != [len(s) for s in sequences]:
            raise ValueError("pool_masks must have one mask per sequence, of the sequence's length")
        self.sequences = sequences
        self.pad_id = pad_id
        self.device = device
        self.skip_id = skip_id
        self.pool_masks = pool_masks

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, indices: Sequence[int], padding_side: str = "right") -> Batch:
        seqs = [self.sequences[i] for i in indices]
        tokens = torch.nn.utils.rnn.pad_sequence(
            seqs, batch_first=True, padding_value=self.pad_id, padding_side=padding_side
        )
        ones = [torch.ones_like(s) for s in seqs]
        if self.pool_masks is None:
            pooled = [o.clone() for o in ones]
        else:
            pooled = [self.pool_masks[i].clone().long() for i in indices]
        for p, seq in zip(pooled, seqs):
            if self.skip_id is not None and len(seq) > 1 and int(seq[0]) == self.skip_id:
                p[0] = 0

        def pad(rows: list[Tensor]) -> Tensor:
            return torch.nn.utils.rnn.pad_sequence(
                rows, batch_first=True, padding_value=0, padding_side=padding_side
            ).to(self.device)

        mask = pad(ones)
        return Batch(
            kwargs={"input": tokens.to(self.device), "attention_mask": mask}, mask=pad(pooled), size=len(seqs),
            extra={"padding_side": padding_side},
        )


class _SitesReached(Exception):
    """Raised by :func:`_stop_after`'s hooks once every requested site has run."""


def _stop_after(sites: Sequence[str]) -> list[Hook]:
    """Hooks that end the forward pass (with :class:`_SitesReached`) once every site in ``sites`` ran.

    They raise once: when activation checkpointing recomputes a block in the backward pass and
    fires its hooks again, they let it through.
    """
    pending, fired = set(sites), [False]

    def after(site: str) -> Callable[..., Any]:
        def hook(act: Tensor, *, hook: Any) -> Tensor:
            pending.discard(site)
            if not pending and not fired[0]:
                fired[0] = True
                raise _SitesReached
            return act

        return hook

    return [(s, after(s)) for s in dict.fromkeys(sites)]


class LanguageModelRunner:
    """Runs a TransformerLens language model (``TransformerBridge`` or any ``HookedRootModule``).

    Prompts are strings (tokenised one by one with the model's own ``to_tokens``, so BOS handling is
    the model's), conversations (lists of ``{"role", "content"}`` messages, rendered with the
    tokenizer's chat template and pooled as ``chat_pool`` says; see :mod:`lineas_tl.chat`) or token
    ids: a list of lists, or a ``[batch, pos]`` tensor with an optional ``attention_mask``. Token
    batches go to the device of the input embedding (:func:`input_device`). Batches are
    right-padded for fitting and collection, which with causal attention leaves every real token's
    activation exactly as in a one-by-one run.

    Pooling skips a leading BOS token (unless ``pool_bos=True``): under causal attention it is
    the same for every prompt, so it carries nothing about the prompt, and in models with an
    attention sink (SmolLM2) its activation is hundreds of times larger than the other tokens'
    and, divided by varying prompt lengths, would swamp the pooled features.
    """

    def __init__(self, model: Any, pool_bos: bool = False, chat_pool: ChatPool = "user"):
        self.model = model
        self.pool_bos = pool_bos
        self.chat_pool = chat_pool
        params = inspect.signature(model.forward).parameters
        self._takes_mask = "attention_mask" in params
        self._takes_stop = "stop_at_layer" in params
        self._takes_return_type = "return_type" in params
        # Fitting and collection never reuse a KV cache: building one costs memory, and a cache is
        # state that activation checkpointing's recomputation would write twice.
        self._takes_use_cache = "use_cache" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        # A bridge derives position ids from the attention mask and asks the device whether any row
        # needs them (a sync per forward pass, which also blocks CUDA-graph capture). A right-padded
        # batch never does (each row's real tokens sit at 0, 1, ...): hand it those positions.
        accepts = getattr(model, "_accepts_derived_position_ids", None)
        try:
            self._gives_positions = bool(accepts()) if callable(accepts) else False
        except Exception:  # noqa: BLE001 (a model that cannot tell: leave its positions alone)
            self._gives_positions = False

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    def prepare(self, prompts: Any, attention_mask: Tensor | None = None) -> TokenSequences:
        """Prepare strings, conversations or token ids; raises ValueError on an empty or unusable set."""
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of strings or token ids, not a single string")
        if is_conversation(prompts):
            raise TypeError("prompts is one conversation; pass a list of conversations ([conversation])")
        pool_masks = None
        if isinstance(prompts, Tensor):
            if prompts.ndim != 2:
                raise ValueError(f"a token tensor must be [batch, pos], got shape {tuple(prompts.shape)}")
            mask = attention_mask if attention_mask is not None else torch.ones_like(prompts)
            seqs = [row[m.bool()].long().cpu() for row, m in zip(prompts, mask)]
        else:
            prompts = list(prompts)
            if not prompts:
                raise ValueError("the prompt set is empty: pass at least one prompt")
            if all(isinstance(p, str) for p in prompts):
                seqs = [self._tokenize(p) for p in prompts]
            elif is_conversation_set(prompts):
                rendered = [render(self.tokenizer, c, self.chat_pool) for c in prompts]
                seqs, pool_masks = [r.ids for r in rendered], [r.pool_mask for r in rendered]
            elif all(isinstance(p, (list, tuple, Tensor)) for p in prompts):
                seqs = [torch.as_tensor(p, dtype=torch.long).reshape(-1).cpu() for p in prompts]
            else:
                raise TypeError(
                    "prompts must be all strings, all conversations (lists of {'role', 'content'} dicts) "
                    "or all token-id sequences, not a mix"
                )
        if not seqs:
            raise ValueError("the prompt set is empty: pass at least one prompt")
        if any(len(s) == 0 for s in seqs):
            raise ValueError("a prompt has no tokens; remove empty prompts")
        bos = getattr(self.tokenizer, "bos_token_id", None) if self.tokenizer is not None else None
        skip = None if self.pool_bos or not isinstance(bos, int) else bos
        return TokenSequences(seqs, self._pad_id(), self.device, skip, pool_masks)

    def _tokenize(self, text: str) -> Int[Tensor, " pos"]:
        if self.tokenizer is None:
            raise ValueError(
                "prompts were given as strings but the model has no tokenizer; pass token ids "
                "instead (a list of lists of ints, or a [batch, pos] tensor with attention_mask)"
            )
        if hasattr(self.model, "to_tokens"):
            return self.model.to_tokens(text)[0].long().cpu()
        return torch.as_tensor(self.tokenizer(text)["input_ids"], dtype=torch.long)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, attr, None) if tok is not None else None
            if isinstance(value, int):
                return value
        return 0

    def forward(self, batch: Batch, hooks: list[Hook], sites: Sequence[str] | None = None) -> Any:
        """Run the model on ``batch`` with ``hooks`` attached; stop after the deepest of ``sites``."""
        kwargs = dict(batch.kwargs)
        tokens = kwargs.pop("input")
        if not self._takes_mask:
            kwargs.pop("attention_mask", None)
        if sites is not None and self._takes_stop:
            stop = stop_layer(self.model, sites)
            if stop is not None:
                kwargs["stop_at_layer"] = stop
        if self._takes_return_type and "stop_at_layer" not in kwargs:
            kwargs["return_type"] = None if sites is not None else "logits"
        if sites is not None and "stop_at_layer" not in kwargs:
            # The last block is needed, but nothing after the last site is: stop there instead of
            # computing the final norm and the logits (a quarter of SmolLM2's forward pass).
            hooks = [*hooks, *_stop_after(sites)]
        if self._takes_use_cache:
            kwargs["use_cache"] = False
        if self._gives_positions and batch.extra.get("padding_side") == "right" and "position_ids" not in kwargs:
            kwargs["position_ids"] = torch.arange(tokens.shape[1], device=tokens.device)[None]  # HF's default
        hooks = [h for h in hooks if not getattr(h[1], "skips", False)]  # strength 0: not attached at all
        try:
            with self.model.hooks(fwd_hooks=hooks):
                return self.model(tokens, **kwargs)
        except _SitesReached:
            return None

    def features(self, site: str, act: Tensor) -> tuple[int, tuple[int, ...]]:
        """Language-model activations are ``[batch, pos, *features]``."""
        return 2, tuple(act.shape[2:])

    def generate(
        self,
        prompt: Any,
        make_hooks: Callable[[GenerationPositions], list[Hook]],
        *,
        max_new_tokens: int = 30,
        do_sample: bool = False,
        use_past_kv_cache: bool = True,
        return_type: str = "str",
        attention_mask: Tensor | None = None,
        chat: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Generate from ``prompt`` with the hooks of ``make_hooks(tracker)`` attached.

        A list of prompts is left-padded into one batch and its attention mask passed to the
        model's ``generate``, so each row continues as it would alone. ``return_type``: ``"str"``
        (prompt and continuation, as TransformerLens returns), ``"continuation"`` (the new text
        only) or ``"tokens"`` (``[batch, pos]`` ids, prompt included, left padding kept).

        A conversation (a list of ``{"role", "content"}`` messages), a list of them, or strings with
        ``chat=True`` are rendered with the chat template and its generation prompt, so the new
        tokens are the assistant's reply: ``positions="generated"`` steers the reply only, and
        ``return_type="continuation"`` returns it.
        """
        if not hasattr(self.model, "generate"):
            raise TypeError(f"{type(self.model).__name__} has no generate(); steer a forward pass instead")
        if return_type not in ("str", "continuation", "tokens"):
            raise ValueError("return_type must be 'str', 'continuation' or 'tokens'")
        single = isinstance(prompt, str) or (isinstance(prompt, Tensor) and prompt.ndim == 1) or is_conversation(prompt)
        prompts = [prompt] if isinstance(prompt, str) or is_conversation(prompt) else prompt
        prompts = as_conversations(prompts, chat)
        if isinstance(prompts, Tensor) and prompts.ndim == 1:
            prompts = prompts[None]
        prepared = self.prepare(prompts, attention_mask)
        batch = prepared.batch(range(len(prepared)), padding_side="left")
        tokens, mask = batch.kwargs["input"], batch.kwargs["attention_mask"]
        tracker = GenerationPositions(prompt_len=tokens.shape[1], left_pad=(mask == 0).sum(1))
        kwargs.setdefault("stop_at_eos", self.tokenizer is not None)
        handle = self.model.register_forward_pre_hook(tracker.on_forward)
        try:
            hooks = [h for h in make_hooks(tracker) if not getattr(h[1], "skips", False)]  # strength 0: none
            with self.model.hooks(fwd_hooks=hooks):
                out = self.model.generate(
                    tokens,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    use_past_kv_cache=use_past_kv_cache,
                    return_type="tokens",
                    verbose=False,
                    **kwargs,
                )
        finally:
            handle.remove()
        if return_type == "tokens" or self.tokenizer is None:
            return out
        n_prompt = tokens.shape[1]
        if return_type == "continuation":
            rows = list(out[:, n_prompt:])
        else:
            rows = [torch.cat([p[m.bool()], g]) for p, m, g in zip(out[:, :n_prompt], mask, out[:, n_prompt:])]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return texts[0] if single else texts
