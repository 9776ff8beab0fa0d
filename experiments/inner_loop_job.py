"""A batched LoRA inner-loop job on a device mesh, single- or multi-host; resumable.

    python -m experiments.inner_loop_job --preset tiny-qwen2 --adapters 8 --out runs/job
    python -m experiments.inner_loop_job --preset qwen2.5-7b --dtype bfloat16 --adapters 16 --mesh 4,2 \
        --distributed --out runs/job7b                      # on every worker of a TPU pod (see tpu/README.md)

Random-init base (or --model DIR, a HF checkpoint) and random token data of --seq-len tokens per example: this is
the scale-out smoke test and the multi-host launch target. Every process builds the same plan deterministically and
feeds only its own shards; only process 0 writes `results.json`; orbax checkpoints every --checkpoint-every steps,
and re-running the same command resumes from the last one (or does nothing if results.json exists).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from seal_jax.runs import ArgumentParser


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-qwen2")
    ap.add_argument("--model", default=None, help="a HF checkpoint dir instead of a random-init preset")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--examples", type=int, default=3, help="examples per adapter")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--mesh", default=None, help="ADAPTER,MODEL (default: all devices on the adapter axis)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="steps between orbax checkpoints (0 = none)")
    ap.add_argument("--stop-after", type=int, default=None, help="train at most this many steps, then exit "
                    "(simulates a preemption; re-run to resume)")
    ap.add_argument("--hbm-gib", type=float, default=None, help="memory per device for the planner's check "
                    "(default: what the accelerator reports; no check on CPU)")
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    ap.add_argument("--coordinator", default=None, help="host:port of process 0 (not needed on TPU pods)")
    ap.add_argument("--num-processes", type=int, default=None)
    ap.add_argument("--process-id", type=int, default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from seal_jax import distributed
    if args.distributed:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import numpy as np

    import seal_jax
    from seal_jax import inner_loop as il
    from seal_jax.checkpoints.state import StateCheckpointer
    from seal_jax.lora import LoraConfig, init_lora

    results_path = os.path.join(args.out, "results.json")
    if os.path.exists(results_path):
        if distributed.is_main_process():
            print(f"{results_path} exists: nothing to do")
        return 0
    if args.mesh:
        try:
            a, m = (int(x) for x in args.mesh.split(","))
        except ValueError:
            print(f"error: --mesh must be ADAPTER,MODEL (two integers), got {args.mesh!r}", file=sys.stderr)
            return 2
    else:
        a, m = jax.device_count(), 1
    if args.adapters % a:
        print(f"error: --adapters {args.adapters} is not a multiple of the mesh's adapter axis {a}", file=sys.stderr)
        return 2
    mesh = distributed.make_mesh(a, m)

    from seal_jax import planner
    cfg = seal_jax.load_config(args.model) if args.model else seal_jax.get_preset(args.preset)
    lora_cfg = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.targets.split(",")))
    budget = args.hbm_gib * planner.GiB if args.hbm_gib else (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if budget:  # stop before loading or compiling anything when the run cannot fit
        try:
            planner.check_fits(planner.plan_training(cfg, lora_cfg, args.adapters, args.seq_len,
                                                     examples_per_adapter=args.examples, mesh=(a, m),
                                                     dtype=args.dtype), budget)
        except planner.MemoryPlanError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    model = (seal_jax.load_pretrained(args.model, dtype=args.dtype) if args.model
             else seal_jax.init_model(seal_jax.get_preset(args.preset), seed=args.seed, dtype=args.dtype))
    model = distributed.shard_model(model, mesh)
    cfg = model.config
    rng = np.random.default_rng(args.seed)
    datasets = [[il.Example(tuple(rng.integers(3, cfg.vocab_size, args.seq_len).tolist()))
                 for _ in range(args.examples)] for _ in range(args.adapters)]
    specs = [il.TrainSpec(learning_rate=args.lr, epochs=args.epochs, seed=args.seed + k) for k in range(args.adapters)]
    plan = il.build_plan(datasets, specs)
    lora = distributed.shard_lora(init_lora(cfg, lora_cfg, jax.random.PRNGKey(args.seed), args.adapters), mesh)
    state = il.init_state(lora, plan, mesh)

    ckpt = StateCheckpointer(os.path.join(os.path.abspath(args.out), "checkpoints"))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        if distributed.is_main_process():
            print(f"resumed from step {ckpt.latest_step()}")
    done_steps = int(distributed.gather(state.step).min())
    remaining = plan.max_steps - done_steps
    if args.stop_after is not None:
        remaining = min(remaining, args.stop_after)
    save = (lambda s: ckpt.save(int(distributed.gather(s.step).min()), s)) if args.checkpoint_every else None

    t0 = time.perf_counter()
    state = il.train(model, state, plan, num_steps=remaining, chunk=args.checkpoint_every or None,
                     callback=save, mesh=mesh)
    steps, failed, losses = distributed.gather((state.step, state.failed, state.losses))
    elapsed = time.perf_counter() - t0
    if int(steps.min()) < plan.max_steps and not failed.any():
        if distributed.is_main_process():
            print(f"stopped at step {int(steps.min())} of {plan.max_steps}; re-run to resume")
        distributed.barrier("inner_loop_job_stopped")
        return 0

    if distributed.is_main_process():
        os.makedirs(args.out, exist_ok=True)
        result = {
            "config": vars(args), "model": cfg.__class__.__name__, "preset": args.preset,
            "devices": jax.device_count(), "processes": jax.process_count(), "mesh": [a, m],
            "steps": steps.tolist(), "failed": failed.tolist(),
            "first_loss": [float(l[0]) for l in losses], "final_loss": [float(l[int(s) - 1]) for l, s in
                                                                        zip(losses, steps)],
            "train_seconds_this_run": elapsed, "real_tokens": plan.real_tokens.tolist(),
        }
        tmp = results_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, results_path)
        print(f"wrote {results_path}: {args.adapters} adapters, {jax.process_count()} process(es), "
              f"{jax.device_count()} device(s), mean final loss {np.mean(result['final_loss']):.4f}")
    distributed.barrier("inner_loop_job_done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
