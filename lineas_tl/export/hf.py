"""``format="hf"``: the steered model, maps folded into its weights, as a plain Hugging Face directory.

It loads with stock ``AutoModelForCausalLM.from_pretrained(path)`` (and so in any stack that reads
Hugging Face checkpoints or converts them) and computes the steered model with no lineas-tl code.

Where a fold needs a bias the architecture lacks (Llama's ``o_proj`` and ``down_proj`` for maps at
``hook_attn_out`` / ``hook_mlp_out``; ``gate_proj`` and ``up_proj`` for the paper's
``blocks.L.ln2.hook_out``; ``q_proj``, ``k_proj``, ``v_proj`` for ``blocks.L.ln1.hook_out``), the
config's own switch is turned on: ``attention_bias`` or ``mlp_bias``. Each switch gives every
projection of its sublayer a bias; those the fold did not write are saved as zeros, which is exact.
The directory also holds ``lineas_tl_export.json`` (method,
hyper-parameters, strength, fingerprint of the fitted model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lineas_tl.export.common import active_strengths, clean_key, record_json, steerer_record
from lineas_tl.fold import FoldError, Steerable, fold, probe_batch

__all__ = ["RECORD_FILE", "save_folded"]

RECORD_FILE = "lineas_tl_export.json"


def save_folded(
    steerer: Steerable,
    path: str | os.PathLike[str],
    strength: float | str | Mapping[str, float] = 1.0,
    *,
    inverse: bool = False,
) -> Path:
    """Write the steered model, maps folded into its weights, as a Hugging Face model directory.

    Before the directory is moved into place, it is reloaded with ``AutoModelForCausalLM`` and its
    logits compared with the hooked model's on a probe sequence. The weights in memory are restored.

    Args:
        steerer: a fitted steerer on a ``TransformerBridge`` over a Hugging Face model.
        path: a new (or empty) directory.
        strength: a float, ``{site: float}`` or ``"calibrated"``.
        inverse: fold :math:`T^{-1}` instead of :math:`T`.

    Raises:
        FoldError: a site cannot be folded, the architecture cannot hold a needed bias, or the
            reloaded model does not reproduce the steered one.
        FileExistsError: ``path`` exists and is not an empty directory.
    """
    from transformers import AutoModelForCausalLM

    target = Path(path).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty directory; choose a new path")
    hf = getattr(steerer.model, "original_model", None)
    if not isinstance(hf, nn.Module) or not hasattr(hf, "config"):
        raise FoldError(
            f"{type(steerer.model).__name__} does not wrap a Hugging Face model; format='hf' needs a "
            "TransformerBridge booted from transformers"
        )
    probe = probe_batch(steerer)
    if probe is None:
        raise FoldError("format='hf' supports language models only")
    per_site = active_strengths(steerer, strength, inverse=inverse)
    per_site = {s: per_site.get(s, 0.0) for s in steerer.maps_}
    tokens = probe.kwargs["input"]
    with torch.no_grad():
        expected = steerer.runner.forward(probe, steerer.fwd_hooks(per_site, inverse=inverse))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        with fold(steerer, per_site, inverse=inverse) as handle:
            names = {id(m): n for n, m in hf.named_modules(remove_duplicate=False)}
            created = [
                clean_key(names[id(module)]) + "." + name
                for module, name, original in handle._saved
                if original is None and id(module) in names
            ]
            state = {}
            for key, value in hf.state_dict().items():
                state.setdefault(clean_key(key), value.detach().clone())
        fresh = AutoModelForCausalLM.from_config(_config_with_biases(hf.config, created))
        fresh = fresh.to(dtype=next(hf.parameters()).dtype)
        wanted = fresh.state_dict()
        missing = [k for k in wanted if k not in state]
        not_bias = [k for k in missing if not k.endswith(".bias")]
        if not_bias:
            raise FoldError(f"cannot map the bridge's weights back to {type(fresh).__name__}: missing {not_bias[:5]}")
        for key in missing:  # biases the config switch adds besides the folded ones: exactly zero
            state[key] = torch.zeros_like(wanted[key])
        fresh.load_state_dict({k: state[k] for k in wanted}, strict=True)
        fresh.save_pretrained(tmp)
        tokenizer = getattr(steerer.model, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(record_json(steerer_record(steerer, strength, inverse, "hf")))
        _check_reloaded(tmp, tokens, expected)
        os.replace(tmp, target) if target.exists() else os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _config_with_biases(config: Any, created: list[str]) -> Any:
    """A copy of ``config`` whose bias switches hold the biases the fold created."""
    cfg = config.to_dict()
    cfg.update(output_attentions=False, output_hidden_states=False)  # runtime flags the bridge sets
    out = type(config).from_dict(cfg)
    for key in created:
        flag = "mlp_bias" if ".mlp." in key else "attention_bias"
        if not hasattr(out, flag):
            raise FoldError(
                f"the fold created the bias {key}, but {type(out).__name__} has no `{flag}` switch to "
                "store it: this architecture cannot be exported folded; keep the fold in memory "
                "(steerer.fold()) or steer with hooks"
            )
        setattr(out, flag, True)
    return out


def _check_reloaded(directory: Path, tokens: torch.Tensor, expected: torch.Tensor) -> None:
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        got = reloaded(tokens.to(next(reloaded.parameters()).device)).logits
    err = float((got.to(expected.device) - expected).abs().max())
    tol = 1e-4 * (1.0 + float(expected.abs().max()))
    if not err <= tol:
        raise FoldError(
            f"the exported model does not reproduce the steered model (max |diff| {err:.3g} > {tol:.3g}); "
            "nothing was written"
        )
