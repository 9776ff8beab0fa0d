"""The ragged engine sharded == the single-device engine, run under 8 simulated CPU devices (tests/test_sharding.py)
or as one process of a multi-process run (tests/test_multihost.py: `--distributed` with SEAL_COORDINATOR,
SEAL_NUM_PROCESSES and SEAL_PROCESS_ID set, 4 devices each).

The stream: 14 jobs with ragged sequence lengths, different learning rates, schedules, epochs, batch sizes and clips,
through 2 slots per adapter shard (so slots are refilled, some after a failure), one job diverging (lr 1e30) and one
with a non-finite adapter from its first step; the model has grouped-query attention (8 query heads over 4 kv heads:
a 2- or 4-way "model" axis splits both, an 8-way one only the query heads).

Prints one JSON line (process 0 only): {mesh: {"weights": max |diff| of every adapter's LoRA weights, "losses": max
|diff| of every step's loss, "failed": [...], "same_failures": bool, "same_real_tokens": bool, "token_slots", "real_tokens",
"shard_busy_slots", "sharded": bool}, "reference": {...}}.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import seal_jax
from seal_jax import distributed, engine as eng, inner_loop as il
from seal_jax.lora import LoraConfig

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
POISONED_SEED = 1013  # the adapter initialised from this seed is nan from the start


def jobs(vocab: int) -> list[eng.Job]:
    rng = np.random.default_rng(0)
    schedules = ["linear", "cosine", "constant"]
    out = []
    for i in range(14):
        n = int(rng.integers(1, 5))
        exs = [il.Example(tuple(rng.integers(3, vocab, int(rng.integers(5, 40))).tolist())) for _ in range(n)]
        lr = 1e30 if i == 5 else 1e-4 * (1 + i % 3)
        spec = il.TrainSpec(learning_rate=lr, schedule=schedules[i % 3], warmup_steps=i % 2, epochs=1 + i % 3,
                            batch_size=1 + i % 2, max_grad_norm=0.05 if i % 4 == 0 else 1.0, seed=i)
        out.append(eng.Job(exs, spec, init_seed=1000 + i))
    return out


def poison_one_adapter() -> None:
    fresh = eng._fresh

    def poisoned(cfg, lcfg, seed):
        return jax.tree.map(lambda x: jnp.where(seed == POISONED_SEED, jnp.nan, x), fresh(cfg, lcfg, seed))

    eng._fresh = poisoned


def main(meshes) -> None:
    cfg = seal_jax.get_preset("tiny-qwen2").replace(num_heads=8, num_kv_heads=4, head_dim=8)
    model = seal_jax.init_model(cfg, seed=0)
    lcfg = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "down"))
    ecfg = eng.EngineConfig(slots=2, max_tokens_per_step=128, steps_per_call=3)
    poison_one_adapter()
    work = jobs(cfg.vocab_size)
    ref = {d.index: d for d in eng.Engine(model, lcfg, ecfg).run(work)}
    out = {"reference": {"failed": sorted(i for i, d in ref.items() if d.failed),
                         "steps": [ref[i].steps for i in range(len(work))],
                         "real_tokens": [ref[i].real_tokens for i in range(len(work))]}}
    for shape in meshes:
        mesh = distributed.make_mesh(*shape)
        e = eng.Engine(distributed.shard_model(model, mesh), lcfg, ecfg, mesh=mesh)
        got = {d.index: d for d in e.run(work)}
        w = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for i in ref
                for a, b in zip(jax.tree.leaves(got[i].lora.weights), jax.tree.leaves(ref[i].lora.weights)))
        ls = max(float(np.abs(np.asarray(got[i].losses) - np.asarray(ref[i].losses)).max(initial=0.0))
                 for i in ref if len(got[i].losses) == len(ref[i].losses))
        bank = e._init_state(2 * shape[0]).lora.weights["q"]["a"]
        out[str(shape)] = {
            "weights": w, "losses": ls, "failed": sorted(i for i, d in got.items() if d.failed),
            "same_failures": all(got[i].failed == ref[i].failed and got[i].steps == ref[i].steps and
                                 len(got[i].losses) == len(ref[i].losses) for i in ref),
            "same_real_tokens": all(got[i].real_tokens == ref[i].real_tokens for i in ref) and
                                e.stats["real_tokens"] == sum(d.real_tokens for d in ref.values()),
            "token_slots": e.stats["token_slots"], "real_tokens": e.stats["real_tokens"],
            "shard_busy_slots": e.stats["shard_busy_slots"],
            "sharded": len(bank.sharding.device_set) == 8 and str(bank.sharding.spec[0]) == "adapter"}
    if distributed.is_main_process():
        print(json.dumps(out))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mesh", action="append", help="A,M (default: the four meshes of 8 devices)")
    ap.add_argument("--distributed", action="store_true", help="join the processes of SEAL_COORDINATOR etc.")
    args = ap.parse_args()
    if args.distributed:
        distributed.initialize()
    assert jax.device_count() == 8, jax.devices()
    main([tuple(int(x) for x in m.split(",")) for m in args.mesh] if args.mesh else MESHES)
