"""Estimate memory per device before running anything (see seal_jax/planner.py for the model).

    python -m experiments.plan_memory --preset qwen2.5-7b --device v5e --devices 8 --adapters 16 --seq-len 256
    python -m experiments.plan_memory --preset llama-3.2-1b --device H100 --mesh 1,1 --adapters 16 \
        --lora-rank 128 --lora-alpha 16 --targets q,v,gate,up,down --seq-len 2048 --generate 64,512,128

Without --mesh it lists every (adapter, model) factorisation of --devices and whether it fits.
"""

from __future__ import annotations

import argparse
import json
import sys

from seal_jax import planner
from seal_jax.lora import LoraConfig
from seal_jax.models.config import get_preset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--device", required=True, help=f"one of {', '.join(planner.DEVICE_MEMORY)}")
    ap.add_argument("--devices", type=int, default=1, help="number of chips")
    ap.add_argument("--mesh", default=None, help="ADAPTER,MODEL (default: try all factorisations of --devices)")
    ap.add_argument("--adapters", type=int, default=16)
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
    args = ap.parse_args(argv)

    try:
        cfg = get_preset(args.preset)
        budget = planner.device_memory(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.targets.split(",")))
    if args.mesh:
        meshes = [tuple(int(x) for x in args.mesh.split(","))]
    else:
        meshes = [(args.devices // m, m) for m in range(1, args.devices + 1) if args.devices % m == 0]
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


if __name__ == "__main__":
    sys.exit(main())
