"""Milliseconds per global step of the ragged engine on the shipped demo model (CPU), for a few slot counts.

    OMP_NUM_THREADS=2 python -m benchmarks.engine_step_cpu

Two jobs of 6 sequences x 20 tokens, 10 epochs (120 global steps of one 32-token row: the shape of `make demo`'s
self-edit fine-tunes), LoRA rank 32 on all seven targets (the demo's) or on q,v; the programs are compiled first
(`Engine.compile`), so the time is the steps only. Prints one line per setting with the slots the stream holds
(min(slots, jobs): `engine.stream_slots`) and the engine's shape buckets.
"""

from __future__ import annotations

import os
import time

import numpy as np

import seal_jax
from seal_jax import engine as eng
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "seal_jax", "assets", "demo_model")
ALL = ("q", "k", "v", "o", "gate", "up", "down")


def ms_per_step(model, slots: int, targets: tuple[str, ...]) -> tuple[float, dict]:
    rng = np.random.default_rng(0)
    jobs = [eng.Job([il.Example(tuple(rng.integers(3, 200, 20).tolist())) for _ in range(6)],
                    il.TrainSpec(learning_rate=3e-3, epochs=10, seed=i), init_seed=i) for i in range(2)]
    cfg = eng.EngineConfig(slots=slots)
    e = eng.Engine(model, LoraConfig(rank=32, alpha=64.0, targets=targets), cfg)
    e.compile(jobs)
    t = time.perf_counter()
    list(e.run(jobs))
    ms = 1000 * (time.perf_counter() - t) / e.stats["global_steps"]
    return ms, {**e.stats, "K": eng.stream_slots(cfg, len(jobs))}


def main() -> None:
    model = seal_jax.load_pretrained(DEMO, dtype="float32")
    for slots, targets in ((1, ALL), (4, ALL), (64, ALL), (4, ("q", "v"))):
        ms, stats = ms_per_step(model, slots, targets)
        print(f"slots {slots:2d} (the stream holds {stats['K']}), LoRA on {','.join(targets)}: {ms:.1f} ms/step "
              f"over {stats['global_steps']} steps, shapes (R, T, C) {dict(stats['shapes'])}", flush=True)


if __name__ == "__main__":
    main()
