"""Generation throughput: prefill seconds, decode tokens/s and the fraction of peak memory bandwidth.

    python -m experiments.bench_generate --preset small-qwen2 --batch 8 --prompt-len 128 --new-tokens 64
    python -m experiments.bench_generate --preset llama-3.2-1b --dtype bfloat16 --batch 1,8,64 --json

Weights are random (real ones are never needed for speed). Every row decodes exactly --new-tokens tokens (no stop
ids), compile time is measured separately and excluded, and each timed call ends with block_until_ready.
HBM fraction = (weight bytes + mean KV-cache bytes read per step) / decode step time / peak bandwidth. Decoding is
the library's own (`generation.decode_windows`): the cache grows by doubling from the prompt + 64 slots, so the
decode time includes its growth copies, and each step reads the current window, not a cache sized for the budget.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from seal_jax import generation
from seal_jax.buckets import bucket
from seal_jax.models.config import get_preset
from seal_jax.models.model import init_model
from seal_jax.models.transformer import init_cache
from seal_jax.runs import ArgumentParser

# Peak memory bandwidth in bytes/s by device kind (public spec sheets).
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "TPU v4": 1.2e12, "TPU v5 lite": 8.2e11,
                  "TPU v5e": 8.2e11, "TPU v5p": 2.76e12, "TPU v6 lite": 1.64e12}


def peak_bandwidth(device) -> float | None:
    kind = device.device_kind
    for name, bw in PEAK_BANDWIDTH.items():
        if name.lower() in kind.lower():
            return bw
    return None


def bench_one(model, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    cfg = model.config
    P, N = bucket(prompt_len), bucket(new_tokens, minimum=1)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (batch, P)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (batch, P))
    seg = jnp.ones((batch, P), jnp.int32)
    lengths = jnp.full((batch,), P, jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    zeros_f = jnp.zeros((batch,), jnp.float32)
    max_new = jnp.full((batch,), new_tokens, jnp.int32)
    stop = jnp.full((generation.MAX_STOP_IDS,), -1, jnp.int32)

    def run():
        cache = init_cache(cfg, batch, generation.first_window(P, N), model.dtype)
        t0 = time.perf_counter()
        logits, cache = generation._prefill(model, None, None, tokens, pos, seg, cache)
        logits.block_until_ready()
        t1 = time.perf_counter()
        out, n_gen = generation.decode_windows(model, None, None, cache, logits, lengths, keys, zeros_f,
                                               jnp.ones((batch,), jnp.float32), max_new, stop,
                                               jnp.zeros((batch, N), jnp.int32))
        out.block_until_ready()
        t2 = time.perf_counter()
        assert int(n_gen.min()) == new_tokens
        return t1 - t0, t2 - t1

    t_c = time.perf_counter()
    run()  # compile + warm-up
    compile_s = time.perf_counter() - t_c
    runs = [run() for _ in range(repeats)]
    prefill, decode = min(r[0] for r in runs), min(r[1] for r in runs)  # best of `repeats`, each phase
    step_s = decode / new_tokens
    itemsize = jnp.dtype(model.dtype).itemsize
    weight_bytes = cfg.num_params() * itemsize
    mean_ctx = float(np.mean([_window(P, N, t) for t in range(new_tokens)]))  # cache slots each step reads
    kv_bytes = 2 * cfg.num_layers * batch * mean_ctx * cfg.num_kv_heads * cfg.head_dim * itemsize
    achieved = (weight_bytes + kv_bytes) / step_s
    peak = peak_bandwidth(jax.devices()[0])
    return {
        "batch": batch, "prompt_len": P, "new_tokens": new_tokens, "compile_s": round(compile_s, 3),
        "prefill_s": round(prefill, 5), "decode_s": round(decode, 5),
        "decode_tokens_per_s": round(batch * new_tokens / decode, 2),
        "prefill_tokens_per_s": round(batch * P / prefill, 2),
        "achieved_bytes_per_s": achieved, "hbm_fraction": None if peak is None else round(achieved / peak, 4),
    }


def _window(P: int, N: int, t: int) -> int:
    """The cache slots decode step t attends over (generation.decode_windows: the window doubles as it fills)."""
    S = generation.first_window(P, N)
    while P + t >= S and S < P + N:
        S = P + min(N, 2 * (S - P))
    return S


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small-qwen2")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON line per batch size")
    args = ap.parse_args(argv)

    cfg = get_preset(args.preset)
    model = init_model(cfg, seed=0, dtype=args.dtype)
    dev = jax.devices()[0]
    for b in [int(x) for x in args.batch.split(",")]:
        r = bench_one(model, b, args.prompt_len, args.new_tokens, args.repeats)
        r.update(preset=args.preset, dtype=args.dtype, device=dev.device_kind, jax=jax.__version__)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            hbm = "n/a" if r["hbm_fraction"] is None else f"{100 * r['hbm_fraction']:.1f}%"
            print(f"{args.preset} {args.dtype} batch={b:<3d} prompt={r['prompt_len']} new={args.new_tokens}: "
                  f"prefill {r['prefill_s'] * 1e3:.1f} ms, decode {r['decode_tokens_per_s']:.1f} tok/s "
                  f"({r['decode_s'] / args.new_tokens * 1e3:.2f} ms/step), HBM {hbm}, compile {r['compile_s']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
