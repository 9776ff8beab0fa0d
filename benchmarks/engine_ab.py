"""The ragged engine's training time at another git revision against the working tree's, on a real workload, in one
process, alternating (A B A B ...), so both sides see the same machine state.

    OMP_NUM_THREADS=2 python -m benchmarks.engine_ab --rev fd4ecda --workload knowledge-seal --jobs 16 --repeats 2

The other revision's `seal_jax/engine.py` is loaded as its own module beside the current one (the rest of the package
is the working tree's, so the revision must share its interfaces). Both engines get the same jobs, model and
EngineConfig (the workload's); each compiles its programs first (`Engine.compile`), then every repeat times
`list(engine.run(jobs))`. Prints one JSON line: per side the seconds of each repeat, the best, and the ratio
current / other of the best times, with both sides' token slots (the work must match).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import warnings

import jax

from experiments import workloads
from seal_jax import engine as current
from seal_jax.models.config import get_preset
from seal_jax.models.model import init_model


def load_engine(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:seal_jax/engine.py"], capture_output=True, text=True, check=True)
    path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    path.write(src.stdout)
    path.close()
    spec = importlib.util.spec_from_file_location(f"engine_{rev}", path.name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the other git revision")
    ap.add_argument("--workload", default="knowledge-seal", choices=workloads.WORKLOADS)
    ap.add_argument("--jobs", type=int, default=16, help="the workload's first N jobs")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    w = workloads.build(args.workload).subset(args.jobs)
    full = get_preset("qwen2.5-7b" if args.workload == "knowledge-seal" else "llama-3.2-1b")
    preset = "tiny-qwen2" if args.workload == "knowledge-seal" else "tiny-llama"
    cfg = get_preset(preset).replace(vocab_size=max(w.vocab_size, full.vocab_size),
                                     max_position_embeddings=full.max_position_embeddings)
    model = init_model(cfg, seed=0)
    sides = {"current": current, args.rev: load_engine(args.rev)}
    engines, out = {}, {}
    for name, mod in sides.items():
        cfg_e = workloads.engine_config(w)
        ecfg = mod.EngineConfig(**{f: getattr(cfg_e, f) for f in cfg_e.__dataclass_fields__})
        jobs = [mod.Job(j.examples, j.spec, j.init_seed, key=n) for n, j in enumerate(w.jobs)]
        engines[name] = (mod.Engine(model, w.lora, ecfg), jobs)
        engines[name][0].compile(jobs)
        out[name] = {"seconds": []}
    for _ in range(args.repeats):
        for name, (e, jobs) in engines.items():
            t = time.perf_counter()
            list(e.run(jobs))
            out[name]["seconds"].append(round(time.perf_counter() - t, 3))
            out[name]["token_slots"] = e.plan(jobs)["token_slots"]
    for name in out:
        out[name]["best"] = min(out[name]["seconds"])
    print(json.dumps({"workload": w.name, "jobs": len(w.jobs), "preset": preset, "device": jax.devices()[0].device_kind,
                      "sides": out, "ratio_current_over_other": round(out["current"]["best"] / out[args.rev]["best"],
                                                                      4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
