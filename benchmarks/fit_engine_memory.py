"""Refit the ragged engine's memory model (`seal_jax.planner._ENGINE`) to XLA's own account of the real call.

Each shape's engine call is lowered and compiled from abstract arrays (`seal_jax.engine.lower_call`: nothing is
allocated, so qwen2.5-7b compiles on a laptop) and its `memory_analysis()` read; the planner's raw terms
(`planner.engine_terms`) are then weighted to the least worst relative error, and the script prints the new
weights and every shape's error under the old and the new ones. Run it after changing what one engine call holds:

    python benchmarks/fit_engine_memory.py [--real] [--json out.json]

`--real` adds the two real workloads (qwen2.5-7b 64 slots 8 x 512 q,v r32; llama-3.2-1b 16 slots 4 x 8192, r128
all targets): a few minutes each on CPU. The tests (tests/test_planner.py) hold the planner to 20% of XLA.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import seal_jax
from seal_jax import engine, planner
from seal_jax.lora import ALL_TARGETS as ALL, LoraConfig
from seal_jax.models.model import Model, abstract_params

QV = ("q", "v")
SMALL = [  # preset, vocab, K, R, T, LoRA
    ("small-qwen2", 16384, 16, 4, 256, LoraConfig(rank=32, alpha=64.0, targets=QV)),
    ("small-llama", 16384, 8, 2, 512, LoraConfig(rank=64, alpha=16.0, targets=("q", "v", "gate", "up", "down"))),
    ("tiny-qwen2", 16384, 32, 8, 128, LoraConfig(rank=8, alpha=16.0, targets=QV)),
    ("small-qwen2", 32768, 64, 8, 512, LoraConfig(rank=32, alpha=64.0, targets=QV)),
    ("small-qwen2", 16384, 8, 1, 1024, LoraConfig(rank=16, alpha=32.0, targets=ALL)),
    ("small-llama", 32768, 16, 4, 1024, LoraConfig(rank=128, alpha=16.0, targets=ALL)),
    ("small-llama", 16384, 4, 8, 256, LoraConfig(rank=8, alpha=16.0, targets=QV)),
    ("tiny-qwen2", 65536, 16, 2, 256, LoraConfig(rank=32, alpha=64.0, targets=QV)),
    ("tiny-qwen2", 16384, 128, 16, 128, LoraConfig(rank=16, alpha=32.0, targets=ALL)),
    ("small-qwen2", 16384, 32, 16, 128, LoraConfig(rank=64, alpha=128.0, targets=QV)),
]
REAL = [
    ("qwen2.5-7b", None, 64, 8, 512, LoraConfig(rank=32, alpha=64.0, targets=QV)),
    ("llama-3.2-1b", None, 16, 4, 8192, LoraConfig(rank=128, alpha=16.0, targets=("q", "v", "gate", "up", "down"))),
]


def measure(preset, vocab, K, R, T, lora, real=False) -> dict:
    cfg = seal_jax.get_preset(preset).replace(remat=True)
    if vocab:
        cfg = cfg.replace(vocab_size=vocab)
    model = Model(cfg, abstract_params(cfg, "float32"))
    m = engine.lower_call(model, lora, engine.EngineConfig(slots=K, max_tokens_per_step=R * T), R, T).memory_analysis()
    xla = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    plan = planner.plan_engine(cfg, lora, K, R, T, dtype="float32")
    terms = planner.engine_terms(cfg, lora, K, R, T, dtype="float32")
    fixed = plan.total - plan.activations + terms["saved"]  # everything the weights do not touch
    return {"shape": f"{preset} V={cfg.vocab_size} K={K} {R}x{T} r{lora.rank} {','.join(lora.targets)}",
            "real": real, "xla": xla, "fixed": fixed, "terms": {k: terms[k] for k in planner._ENGINE}}


def fit(rows: list[dict], real_weight: float = 2.0) -> dict[str, float]:
    """Non-negative weights with the least worst relative error over the shapes (a linear programme):
    minimise t subject to u |fixed + w . terms - xla| <= t xla, where u is `real_weight` for the real workloads
    (what the planner is for) and 1 for the small shapes."""
    from scipy.optimize import linprog
    names = list(planner._ENGINE)
    A = np.array([[r["terms"][k] / r["xla"] for k in names] for r in rows])
    b = np.array([(r["xla"] - r["fixed"]) / r["xla"] for r in rows])
    u = np.array([[real_weight if r["real"] else 1.0] for r in rows])
    A, b = u * A, u[:, 0] * b
    n, ones = len(names), np.ones((len(rows), 1))
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=np.r_[np.c_[A, -ones], np.c_[-A, -ones]], b_ub=np.r_[b, -b],
                  bounds=[(0, None)] * (n + 1))
    if not res.success:
        raise RuntimeError(f"the fit failed: {res.message}")
    return {k: round(float(x), 3) for k, x in zip(names, res.x[:n])}


def error(r: dict, weights: dict) -> float:
    est = r["fixed"] + sum(weights[k] * r["terms"][k] for k in weights)
    return (est - r["xla"]) / r["xla"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="add the two real workloads (minutes each)")
    ap.add_argument("--json", help="write the measurements and both fits here")
    args = ap.parse_args(argv)
    rows = []
    for shape in SMALL + (REAL if args.real else []):
        rows.append(measure(*shape, real=shape in REAL))
        print(f"measured {rows[-1]['shape']}: XLA {rows[-1]['xla'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
    new = fit(rows)
    print(f"old weights {planner._ENGINE}\nnew weights {new}")
    print(f"{'shape':64s} {'XLA MiB':>10s} {'old err':>8s} {'new err':>8s}")
    for r in rows:
        print(f"{r['shape']:64s} {r['xla'] / 2**20:10.1f} {error(r, planner._ENGINE):+8.1%} {error(r, new):+8.1%}")
    worst = max(abs(error(r, new)) for r in rows)
    print(f"worst relative error with the new weights: {worst:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "old": planner._ENGINE, "new": new}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
