"""Conversations as prompts: render them with the tokenizer's chat template, mark what to pool.

A *conversation* is a list of ``{"role": ..., "content": ...}`` messages. It is rendered with the
tokenizer's own chat template: with the generation prompt (e.g. ``<|im_start|>assistant\\n``) when
the last message is not the assistant's, so the model's next token starts its reply; as a
continuation of the assistant's text when the last message is the assistant's (a prefilled reply).

Which tokens a pooled feature covers (``chat_pool``):

- ``"user"`` (default): the content tokens of the user messages. The template's fixed tokens
  (role headers, a default system prompt, the generation prompt) are the same in every prompt,
  so they carry nothing about the concept, and pooling them would dilute the difference between
  source and target prompts.
- ``"content"``: the content tokens of every message (system, user and assistant).
- ``"all"``: every token of the rendered conversation (a leading BOS is still left out unless
  ``pool_bos=True``, as for plain text).

A token that straddles a boundary (e.g. a space merged with the first word) counts as content.

Example:
    >>> steerer.fit(source_strings, target_strings, chat=True)     # each string is a user turn
    >>> steerer.generate([{"role": "user", "content": "Tell me about your neighbour."}],
    ...                  positions="generated", return_type="continuation")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

ChatPool = Literal["user", "content", "all"]
CHAT_POOLS: tuple[str, ...] = ("user", "content", "all")
Conversation = Sequence[Mapping[str, str]]


def is_message(x: Any) -> bool:
    """Whether ``x`` is one chat message: a mapping with ``"role"`` and ``"content"``."""
    return isinstance(x, Mapping) and "role" in x and "content" in x


def is_conversation(x: Any) -> bool:
    """Whether ``x`` is one conversation: a non-empty list (or tuple) of messages."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(is_message(m) for m in x)


def is_conversation_set(prompts: Any) -> bool:
    """Whether ``prompts`` is a non-empty list of conversations."""
    return isinstance(prompts, (list, tuple)) and len(prompts) > 0 and all(is_conversation(p) for p in prompts)


def as_conversations(prompts: Any, chat: bool) -> Any:
    """With ``chat=True``, turn each string of ``prompts`` into a one-message user conversation.

    Conversations pass through unchanged, and so does anything when ``chat=False``. Raises
    TypeError for token ids with ``chat=True`` (a template renders text, not ids).
    """
    if not chat:
        return prompts
    if isinstance(prompts, str) or is_conversation(prompts):
        raise TypeError(
            "chat=True expects a list of prompts (strings or conversations); wrap a single prompt in a list"
        )
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append([{"role": "user", "content": p}])
        elif is_conversation(p):
            out.append(list(p))
        else:
            raise TypeError(
                "chat=True takes strings or conversations (lists of {'role', 'content'} dicts), not token "
                f"ids ({type(p).__name__}); render token ids yourself, or pass chat=False"
            )
    return out


def check_chat_tokenizer(tokenizer: Any) -> None:
    """Raise a ValueError naming the fix when ``tokenizer`` cannot render conversations."""
    if tokenizer is None:
        raise ValueError(
            "conversations need a tokenizer with a chat template, but the model has no tokenizer; "
            "pass token ids instead"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the model's tokenizer ({type(tokenizer).__name__}) has no chat template, so it cannot render "
            "conversations; pass plain strings (chat=False), or set tokenizer.chat_template to a Jinja "
            "template first"
        )


@dataclass
class RenderedChat:
    """One rendered conversation.

    Attributes:
        text: the rendered string.
        ids: ``[pos]`` token ids (no special tokens added beyond the template's own).
        pool_mask: ``[pos]`` 1 on the tokens pooling covers (see ``chat_pool``).
    """

    text: str
    ids: Int[Tensor, " pos"]
    pool_mask: Int[Tensor, " pos"]


def render(tokenizer: Any, conversation: Conversation, chat_pool: ChatPool = "user") -> RenderedChat:
    """Render ``conversation`` with ``tokenizer``'s chat template and mark the tokens to pool.

    The generation prompt is added when the last message is not the assistant's; a last assistant
    message is continued instead (``continue_final_message``).
    """
    if chat_pool not in CHAT_POOLS:
        raise ValueError(f"unknown chat_pool {chat_pool!r}; choose one of {CHAT_POOLS}")
    check_chat_tokenizer(tokenizer)
    if not is_conversation(conversation):
        raise TypeError("a conversation is a non-empty list of {'role': ..., 'content': ...} dicts")
    messages = [dict(m) for m in conversation]
    prefill = messages[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
    )
    # apply_chat_template(tokenize=True) tokenises its text this same way: the template holds the
    # special tokens itself.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=chat_pool != "all")
    ids = torch.as_tensor(enc["input_ids"], dtype=torch.long)
    if len(ids) == 0:
        raise ValueError("the chat template rendered an empty conversation")
    if chat_pool == "all":
        return RenderedChat(text, ids, torch.ones_like(ids))
    roles = ("user",) if chat_pool == "user" else None
    spans = _content_spans(text, messages, roles)
    offsets = enc["offset_mapping"]
    mask = torch.tensor(
        [int(any(s < e_tok and s_tok < e for s, e in spans)) for s_tok, e_tok in offsets], dtype=torch.long
    )
    if mask.sum() == 0:
        raise ValueError(
            f"no token of the conversation is pooled with chat_pool={chat_pool!r} (no non-empty "
            "user message?); add a user message or use chat_pool='all'"
        )
    return RenderedChat(text, ids, mask)


def _content_spans(text: str, messages: list[dict[str, Any]], roles: tuple[str, ...] | None) -> list[tuple[int, int]]:
    """Character spans of the messages' contents in ``text``, found in order."""
    spans, at = [], 0
    for m in messages:
        content = str(m["content"])
        start = text.find(content, at) if content else -1
        if start < 0 and content.strip():  # templates may trim the content
            content = content.strip()
            start = text.find(content, at)
        if start < 0:
            if content.strip():
                raise ValueError(
                    f"the chat template rewrote the content of a {m['role']!r} message, so its tokens cannot "
                    "be located; use chat_pool='all'"
                )
            continue
        at = start + len(content)
        if roles is None or m["role"] in roles:
            spans.append((start, at))
    return spans
