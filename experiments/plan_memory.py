"""Estimate memory per device before running anything (see seal_jax/planner.py for the model).

    python -m experiments.plan_memory --preset qwen2.5-7b --device v5e --devices 8 --adapters 16 --seq-len 256
    python -m experiments.plan_memory --preset llama-3.2-1b --device H100 --mesh 1,1 --adapters 16 \
        --lora-rank 128 --lora-alpha 16 --targets q,v,gate,up,down --seq-len 2048 --generate 64,512,128

Without --mesh it lists every (adapter, model) factorisation of --devices and whether it fits.

The ragged engine (`seal_jax.engine`, what the experiments train with) is planned with --engine: --slots (alias
--adapters) adapters per adapter shard, --rows x --seq-len packed streams per global step, rematerialised layers,
per device of --mesh ADAPTER,MODEL on --chip (alias --device); it says what fits one device (the most slots at those
rows, the most rows at those slots, whether the engine rematerialises its layers there):

    python -m experiments.plan_memory --engine --preset qwen2.5-7b --chip H100 --mesh 1,1 --slots 64 --rows 8 \
        --seq-len 512
    python -m experiments.plan_memory --engine --preset qwen2.5-7b --chip v5e --mesh 4,4 --slots 64 --rows 8 \
        --seq-len 512
    python -m experiments.plan_memory --engine --preset llama-3.2-1b --chip H100 --slots 16 --rows 4 \
        --seq-len 8192 --lora-rank 128 --lora-alpha 16 --targets q,v,gate,up,down --batch-size 2 --attention cudnn

--xla also lowers the real call from abstract arrays (nothing allocated), sharded over --mesh on simulated CPU devices,
and prints XLA's compiled memory analysis per device beside the estimate. That analysis is XLA:CPU's, which upcasts
bf16 matmul operands to f32 and keeps f32 copies of the weights (a GPU or TPU does not), so --xla compares in
float32: the estimate at the same dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from seal_jax.runs import ArgumentParser, cli
from seal_jax import planner
from seal_jax.cli import mesh_problems
from seal_jax.lora import LoraConfig
from seal_jax.models.config import get_preset


@cli
def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--device", "--chip", dest="device", required=True,
                    help=f"one of {', '.join(planner.DEVICE_MEMORY)}")
    ap.add_argument("--devices", type=int, default=1, help="number of chips")
    ap.add_argument("--mesh", default=None, help="ADAPTER,MODEL (default: try all factorisations of --devices)")
    ap.add_argument("--adapters", "--slots", dest="adapters", type=int, default=16,
                    help="adapters (--engine: slots per adapter shard)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--examples", type=int, default=8, help="training rows per adapter")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=64.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--generate", default=None, help="ROWS,PROMPT,NEW: also plan generation")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--engine", action="store_true", help="plan one call of the ragged engine (seal_jax.engine)")
    ap.add_argument("--rows", type=int, default=8, help="--engine: packed rows of --seq-len tokens per step")
    ap.add_argument("--steps-per-call", type=int, default=8)
    ap.add_argument("--attention", default=None, help="--engine: attention backend of the call (default: auto)")
    ap.add_argument("--xla", action="store_true",
                    help="--engine: also compile the real call from abstract arrays and print XLA's analysis")
    args = ap.parse_args(argv)
    for name in ("devices", "adapters", "seq_len", "batch_size", "examples", "lora_rank", "rows", "steps_per_call"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.generate is not None:
        parts = args.generate.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            ap.error(f"--generate must be ROWS,PROMPT,NEW (three positive integers), got {args.generate!r}")
    if args.mesh:
        bad = mesh_problems(args)
        if bad:
            print(f"error: {bad[0]}", file=sys.stderr)
            return 2
        meshes = [tuple(int(x) for x in args.mesh.split(","))]
        if meshes[0][0] * meshes[0][1] != args.devices and "--devices" in (sys.argv if argv is None else argv):
            print(f"error: --mesh {args.mesh} uses {meshes[0][0] * meshes[0][1]} devices but --devices is "
                  f"{args.devices}", file=sys.stderr)
            return 2
    else:
        meshes = [(args.devices // m, m) for m in range(1, args.devices + 1) if args.devices % m == 0]
    if args.engine:
        if args.xla and args.mesh:  # the sharded call is compiled on simulated CPU devices, before jax starts them
            os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                       f"--xla_force_host_platform_device_count={meshes[0][0] * meshes[0][1]}")
        return engine_main(args, meshes[0] if args.mesh else (1, 1))

    try:
        cfg = get_preset(args.preset)
        budget = planner.device_memory(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.targets.split(",")))
    for mesh in meshes:
        plans = [planner.plan_training(cfg, lora, args.adapters, args.seq_len, args.batch_size, args.examples, mesh,
                                       args.dtype, args.remat)]
        if args.generate:
            rows, prompt, new = (int(x) for x in args.generate.split(","))
            plans.append(planner.plan_generation(cfg, rows, prompt, new, mesh, args.dtype, lora, args.adapters))
        for plan in plans:
            try:
                planner.check_fits(plan, budget)
                verdict = "fits"
            except planner.MemoryPlanError as e:
                verdict = f"does not fit: {e}"
            if args.json:
                print(json.dumps(dict(plan.as_dict(), preset=args.preset, device=args.device,
                                      budget=budget, fits=verdict == "fits")))
            else:
                print(f"{args.preset} on {args.device} mesh {mesh}: {plan.what}: "
                      f"{plan.total / planner.GiB:.2f} GiB of {budget / planner.GiB:.1f} GiB per device, {verdict}")
                print(plan.table())
    return 0


def engine_main(args, mesh: tuple[int, int]) -> int:
    try:
        cfg = get_preset(args.preset)
        budget = planner.device_memory(args.device)
        lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.targets.split(",")))
        if args.attention:
            cfg = cfg.replace(attention=args.attention)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtypes = [args.dtype] + (["float32"] if args.xla and args.dtype != "float32" else [])
    for dtype in dtypes:
        # the estimate of the chip's own platform; the --xla comparison is XLA:CPU's (this process's platform)
        platform = None if dtype != args.dtype else planner.device_platform(args.device)
        kw = dict(steps_per_call=args.steps_per_call, dtype=dtype, max_batch=args.batch_size, platform=platform)
        plan = planner.plan_engine(cfg, lora, args.adapters, args.rows, args.seq_len, mesh=mesh, **kw)
        fit = planner.engine_fits(cfg.replace(remat=True), lora, budget, args.adapters, args.rows, args.seq_len,
                                  mesh=mesh, **kw)
        try:
            planner.check_fits(plan, budget)
            verdict = "fits"
        except planner.MemoryPlanError as e:
            verdict = f"does not fit: {e}"
        row = dict(plan.as_dict(), preset=args.preset, device=args.device, budget=budget, dtype=dtype,
                   fits=verdict == "fits", rows=args.rows, row_length=args.seq_len, slots=args.adapters,
                   max_slots=fit["max_slots"], max_rows=fit["max_rows"], remat=fit["remat"], mesh=list(mesh))
        if args.xla and dtype == "float32":
            row["xla"] = xla_engine_bytes(cfg, lora, args, dtype, mesh)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{args.preset} ({dtype}) on {args.device}, mesh {mesh}, per device: {plan.what}: "
                  f"{plan.total / planner.GiB:.2f} GiB of {budget / planner.GiB:.1f} GiB, {verdict}")
            print(plan.table())
            up_to = lambda n, what: f"up to {n} {what}" if n else f"no {what}"  # noqa: E731
            print(f"  what fits one device: {up_to(fit['max_slots'], 'slots')} per adapter shard at {args.rows} x "
                  f"{args.seq_len}; {up_to(fit['max_rows'], f'rows of {args.seq_len}')} at {args.adapters} slots; "
                  f"the engine {'rematerialises' if fit['remat'] else 'keeps'} its layers' activations "
                  f"({'' if fit['remat'] else 'no '}remat)")
            if "xla" in row:
                x = row["xla"]
                print(f"  XLA (CPU, {dtype}, per device): arguments {x['arguments'] / planner.GiB:.3f} GiB + "
                      f"temporaries {x['temp'] / planner.GiB:.3f} GiB = {x['total'] / planner.GiB:.3f} GiB "
                      f"(estimate / XLA = {plan.total / x['total']:.3f})")
    return 0


def xla_engine_bytes(cfg, lora, args, dtype: str, mesh: tuple[int, int] = (1, 1)) -> dict:
    """XLA's memory analysis (per device) of the real engine call, compiled from abstract arrays (nothing allocated),
    sharded over `mesh` on simulated CPU devices."""
    from seal_jax import engine
    from seal_jax.models.model import Model, abstract_params
    from seal_jax.sharding import make_mesh
    import jax
    model = Model(cfg.replace(remat=True), abstract_params(cfg, dtype))
    devices = None if mesh == (1, 1) else make_mesh(*mesh, devices=jax.devices("cpu"))
    compiled = engine.lower_call(model, lora, engine.EngineConfig(slots=args.adapters,
                                                                  max_tokens_per_step=args.rows * args.seq_len,
                                                                  steps_per_call=args.steps_per_call),
                                 args.rows, args.seq_len, args.batch_size, mesh=devices)
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "total": total}


if __name__ == "__main__":
    sys.exit(main())
