"""The engine's global step under every attention backend x LoRA backend the device can run, per shape: which is
fastest, measured, so the first run on a device picks the defaults by measurement.

    python -m benchmarks.engine_backends --preset llama-3.2-1b --dtype bfloat16 --slots 16 --shapes 4x2048,16x512 \
        --lora-rank 128 --lora-alpha 16 --targets q,v,gate,up,down --json
    python -m benchmarks.engine_backends --preset tiny-qwen2 --shapes 2x64 --json          # CPU smoke

Per shape R x T: K = --slots jobs of --seq-per-row sequences per row share the rows (every step full: K slots step,
R x T real tokens), one engine call of --steps-per-call global steps is compiled, run once untimed, then --repeats
times; the best call gives ms per global step and real tokens per second. Attention candidates: the platform's
(CPU: einsum, xla, blockwise; GPU: cudnn, xla, blockwise; TPU: splash, xla, blockwise); a backend the selection
would not run for the call (e.g. cuDNN under fp32) is reported as skipped with the selection's reason. LoRA:
tiled, ragged_dot, dense. Prints one JSON line per (shape, attention, lora) and then, per shape, the fastest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from seal_jax import engine as eng
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig
from seal_jax.models import attention as att
from seal_jax.models.config import get_preset
from seal_jax.models.grouped import BACKENDS as LORA_BACKENDS
from seal_jax.models.model import Model, init_model

ATTENTION = {"cpu": ("einsum", "xla", "blockwise"), "gpu": ("cudnn", "xla", "blockwise"),
             "tpu": ("splash", "xla", "blockwise")}


def jobs_for(K: int, R: int, T: int, steps: int, vocab: int) -> list[eng.Job]:
    """K jobs of `steps` one-sequence batches that fill R rows of T tokens exactly when all K step together."""
    per_row = max(1, K // R)
    L = T // per_row
    rng = np.random.default_rng(0)
    return [eng.Job([il.Example(tuple(rng.integers(3, vocab, L).tolist())) for _ in range(steps)],
                    il.TrainSpec(epochs=1, seed=k), init_seed=k) for k in range(K)]


def time_one(model: Model, lora: LoraConfig, K: int, R: int, T: int, G: int, repeats: int) -> dict:
    cfg = eng.EngineConfig(slots=K, max_tokens_per_step=R * T, steps_per_call=G, row_length=T)
    e = eng.Engine(model, lora, cfg)
    jobs = jobs_for(K, R, T, G * (repeats + 1), model.config.vocab_size)  # every timed step still trains
    sched = eng._Scheduler(cfg, jobs)
    call = sched.next_call()
    state = e._init_state(K)
    t0 = time.perf_counter()
    state, losses, _ = e._call(state, call, len(call.steps))
    jax.block_until_ready(losses)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    again = dataclasses.replace(call, reset=np.zeros_like(call.reset))  # the same packed steps, slots kept
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, losses, _ = e._call(state, again, len(call.steps))
        jax.block_until_ready(losses)
        best = min(best, time.perf_counter() - t0)
    n = len(call.steps)
    return {"R": call.R, "T": call.T, "slots": K, "steps": n, "ms_per_step": round(1000 * best / n, 3),
            "real_tokens_per_s": round(call.real_tokens / best, 1),
            "useful_token_fraction": round(call.real_tokens / (n * call.R * call.T), 4),
            "compile_s": round(compile_s, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-qwen2")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--shapes", default="2x64", help="comma list of ROWSxLENGTH")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=64.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--steps-per-call", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", default=None, help="comma list (default: the platform's candidates)")
    ap.add_argument("--lora-backends", default=",".join(b for b in LORA_BACKENDS if b != "auto"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        print(f"error: --shapes must be ROWSxLENGTH[,ROWSxLENGTH...], got {args.shapes!r}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    platform = jax.default_backend()
    candidates = args.attention.split(",") if args.attention else ATTENTION.get(platform, ATTENTION["cpu"])
    base = init_model(get_preset(args.preset), seed=0, dtype=args.dtype)
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.targets.split(",")))
    dt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    fastest = {}
    for R, T in shapes:
        for attention in candidates:
            cfg = base.config
            q = jax.ShapeDtypeStruct((R, T, cfg.num_heads, cfg.head_dim), dt)
            k = jax.ShapeDtypeStruct((R, T, cfg.num_kv_heads, cfg.head_dim), dt)
            chosen, why = att._select(attention, q, k, 0, platform)
            for lb in args.lora_backends.split(","):
                row = {"preset": args.preset, "dtype": args.dtype, "device": jax.devices()[0].device_kind,
                       "shape": f"{R}x{T}", "attention": attention, "lora_backend": lb}
                if chosen != attention:
                    row["skipped"] = why
                else:
                    model = Model(cfg.replace(attention=attention, lora_backend=lb), base.params)
                    try:
                        row.update(time_one(model, lora, args.slots, R, T, args.steps_per_call, args.repeats))
                    except Exception as e:  # a backend that fails on this device is a result, not a crash
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                print(json.dumps(row) if args.json else row, flush=True)
                if "ms_per_step" in row and row["ms_per_step"] < fastest.get(row["shape"], {}).get("ms_per_step",
                                                                                                   float("inf")):
                    fastest[row["shape"]] = row
    for shape, row in fastest.items():
        summary = {"fastest": shape, "attention": row["attention"], "lora_backend": row["lora_backend"],
                   "ms_per_step": row["ms_per_step"], "preset": args.preset, "dtype": args.dtype}
        print(json.dumps(summary) if args.json else summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
