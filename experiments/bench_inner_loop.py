"""Inner-loop throughput: N self-edit evaluations (LoRA fine-tune + answer its questions), batched vs one at a time.

    python -m experiments.bench_inner_loop --preset small-qwen2 --adapters 1,4,16 --seq-len 128 --steps 10 --json
    python -m experiments.bench_inner_loop --preset llama-3.2-1b --dtype bfloat16 --adapters 1,4,16,64 --json

"batched":    all N adapters trained in ONE `inner_loop.train` call (one compiled program, vmapped over adapters, the
              frozen base shared), then all N question sets answered in ONE `generation.generate_grouped` call.
"sequential": the same work with the same library, one adapter after another: a K=1 plan built from each adapter's
              own data and trained with `inner_loop.train` (every K=1 plan has the same shapes, so one compiled
              program serves all N), then each adapter's questions answered with `generation.generate(lora=adapter)`.

Both sides get the same examples (exactly --seq-len random tokens each), the same LoRA initialisation, the same
TrainSpec (--steps optimiser steps of --batch-size rows), the same questions and exactly --new-tokens greedy tokens
per question (no stop ids). Weights are random. Each side first runs one untimed warm-up (it compiles; its extra time
over the timed run is reported as compile time); every timed phase ends with `block_until_ready` (generation returns
host lists, so it is synchronous). Plan building (host numpy) is outside the timed region on both sides; optimiser
state initialisation is inside it on both. With --repeats > 1 the timed runs of the two sides are
interleaved (alternating which goes first) and each phase reports its best run. Compiled-program cache
sizes are checked around the timed runs, and any recompile is reported in the output (`recompiles`).

MFU (training only) counts model FLOPs of a frozen-base LoRA step per trained token:
    4 * (matmul parameters of the base)          forward + backward w.r.t. activations (no base weight gradients)
  + 6 * (LoRA parameters)                        forward, backward w.r.t. activations and w.r.t. the LoRA weights
  + 6 * L * H * Dh * T                           attention scores and values (fwd 4*T*H*Dh halved for causality, bwd 2x)
divided by the time and by the device's dense bf16 peak (null when the device kind is not in PEAK_FLOPS, e.g. CPU).
"""

from __future__ import annotations

import argparse
import json
import warnings

import jax
import numpy as np

from experiments import workloads
from seal_jax import generation
from seal_jax import inner_loop as il
from seal_jax import engine as eng
from seal_jax.cli import mesh_problems
from seal_jax.lora import Lora, LoraConfig, init_lora, num_lora_params, stack_adapters
from seal_jax.models.config import ModelConfig, get_preset
from seal_jax.models.model import init_model
from seal_jax.runs import ArgumentParser

# Dense bf16 peak FLOP/s by device kind (public spec sheets). Matched in order, case-insensitively, on device_kind.
PEAK_FLOPS = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
              ("TPU v4", 275e12)]


def peak_flops(device) -> float | None:
    kind = device.device_kind.lower()
    for name, flops in PEAK_FLOPS:
        if name.lower() in kind:
            return flops
    return None


def base_matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (embedding lookup excluded; the LM head / tied embedding in)."""
    d, f, h, k, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = d * h * dh * 2 + d * k * dh * 2 + 3 * d * f
    return cfg.num_layers * per_layer + cfg.vocab_size * d


def train_flops_per_token(cfg: ModelConfig, lora_cfg: LoraConfig, seq_len: int) -> float:
    attn = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 4 * base_matmul_params(cfg) + 6 * num_lora_params(cfg, lora_cfg) + attn


def make_work(cfg: ModelConfig, n: int, examples: int, questions: int, seq_len: int, prompt_len: int, seed: int = 0):
    """Per adapter: `examples` training sequences of exactly seq_len tokens and `questions` prompts of prompt_len."""
    datasets, prompts = [], []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        datasets.append([il.Example(tuple(rng.integers(3, cfg.vocab_size, seq_len).tolist()))
                         for _ in range(examples)])
        prompts.append([rng.integers(3, cfg.vocab_size, prompt_len).tolist() for _ in range(questions)])
    return datasets, prompts


def _sub(lora: Lora, k: int) -> Lora:
    """Adapter k of a batch, as a batch of one (K=1)."""
    return Lora(lora.config, jax.tree.map(lambda w: w[k:k + 1], lora.weights))


def _ready(state: il.TrainState):
    jax.block_until_ready((state.lora.weights, state.step))


def _cache_sizes() -> dict:
    return {"train": il._train_chunk._cache_size(), "engine": eng._run_call._cache_size(),
            "prefill": generation._prefill._cache_size(), "decode": generation._decode._cache_size()}


Clock = workloads.Clock


class Side:
    """One way of doing the N evaluations; `train()` / `evaluate()` each run one full phase -> (wall s, CPU s)."""

    def __init__(self, model, lora: Lora, datasets, prompts, spec: il.TrainSpec, new_tokens: int):
        self.model, self.lora, self.datasets, self.prompts = model, lora, datasets, prompts
        self.spec, self.new_tokens = spec, new_tokens
        self.trained = None


class Batched(Side):
    def __init__(self, *a):
        super().__init__(*a)
        self.plan = il.build_plan(self.datasets, self.spec)
        self.tokens = int(self.plan.real_tokens.sum())

    def train(self) -> tuple[float, float]:
        c = Clock()
        st = il.train(self.model, il.init_state(self.lora, self.plan), self.plan)
        _ready(st)
        dt = c.stop()
        self.trained = st
        return dt

    def evaluate(self) -> tuple[float, float]:
        c = Clock()
        out = generation.generate_grouped(self.model, self.trained.lora, self.prompts, max_new_tokens=self.new_tokens)
        dt = c.stop()
        assert all(len(a) == self.new_tokens for g in out for a in g)
        return dt


class Ragged(Side):
    """The ragged engine: every adapter a job streamed through N slots, then one multi-adapter answering call."""

    def __init__(self, *a, tokens_per_step: int = 4096):
        super().__init__(*a)
        self.jobs = [eng.Job(d, self.spec, init_seed=k) for k, d in enumerate(self.datasets)]
        self.cfg = eng.EngineConfig(slots=len(self.datasets), max_tokens_per_step=tokens_per_step)
        self.stats = eng.Engine(self.model, self.lora.config, self.cfg).plan(self.jobs)
        self.tokens = self.stats["real_tokens"]

    def train(self) -> tuple[float, float]:
        c = Clock()
        done = sorted(eng.Engine(self.model, self.lora.config, self.cfg).run(self.jobs), key=lambda d: d.index)
        jax.block_until_ready([d.lora.weights for d in done])
        dt = c.stop()
        self.trained = stack_adapters([d.lora for d in done])
        return dt

    def evaluate(self) -> tuple[float, float]:
        c = Clock()
        out = generation.generate_grouped(self.model, self.trained, self.prompts, max_new_tokens=self.new_tokens)
        dt = c.stop()
        assert all(len(a) == self.new_tokens for g in out for a in g)
        return dt


class Sequential(Side):
    def __init__(self, *a):
        super().__init__(*a)
        self.plans = [il.build_plan([d], self.spec) for d in self.datasets]  # K=1 each, identical shapes
        self.loras = [_sub(self.lora, k) for k in range(len(self.datasets))]
        self.tokens = int(sum(p.real_tokens.sum() for p in self.plans))

    def train(self, only: int | None = None) -> tuple[float, float]:
        ks = range(len(self.plans)) if only is None else [only]
        c = Clock()
        trained = []
        for k in ks:
            st = il.train(self.model, il.init_state(self.loras[k], self.plans[k]), self.plans[k])
            _ready(st)  # one adapter after another: each finishes before the next starts
            trained.append(st)
        dt = c.stop()
        self.trained = trained
        return dt

    def evaluate(self, only: int | None = None) -> tuple[float, float]:
        ks = range(len(self.trained)) if only is None else [only]
        c = Clock()
        outs = [generation.generate(self.model, self.prompts[k], max_new_tokens=self.new_tokens,
                                    lora=self.trained[i].lora.adapter(0)) for i, k in enumerate(ks)]
        dt = c.stop()
        assert all(len(a) == self.new_tokens for o in outs for a in o)
        return dt


def warm_up(side: Side, with_eval: bool, **kw) -> float:
    c = Clock()
    side.train(**kw)
    if with_eval:
        side.evaluate(**kw)
    return c.stop()[0]


def time_sides(sides: dict, with_eval: bool, repeats: int) -> tuple[dict, dict]:
    """`repeats` timed runs of every side, interleaved (and in alternating order) so that background load on the
    machine hits both sides alike; best run of each phase. Reports any recompilation during the timed runs."""
    before = _cache_sizes()
    runs = {name: {"train": [], "eval": [], "train_cpu": [], "eval_cpu": []} for name in sides}
    names = list(sides)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            for phase in ("train", "eval") if with_eval else ("train",):
                wall, cpu = getattr(sides[name], phase if phase == "train" else "evaluate")()
                runs[name][phase].append(wall)
                runs[name][phase + "_cpu"].append(cpu)
    after = _cache_sizes()
    recompiles = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    out = {}
    for name, r in runs.items():
        train_s = min(r["train"])
        eval_s = min(r["eval"]) if with_eval else None
        train_cpu, eval_cpu = min(r["train_cpu"]), (min(r["eval_cpu"]) if with_eval else None)
        out[name] = {"train_s": train_s, "eval_s": eval_s, "total_s": train_s + (eval_s or 0.0),
                     "train_cpu_s": train_cpu, "eval_cpu_s": eval_cpu, "cpu_s": train_cpu + (eval_cpu or 0.0),
                     "train_runs": [round(x, 4) for x in r["train"]], "eval_runs": [round(x, 4) for x in r["eval"]]}
    return out, recompiles


def bench_one(model, lora_cfg: LoraConfig, n: int, args) -> dict:
    cfg = model.config
    datasets, prompts = make_work(cfg, n, args.examples, args.questions, args.seq_len, args.prompt_len)
    spec = il.TrainSpec(learning_rate=args.lr, schedule="linear", max_steps=args.steps, batch_size=args.batch_size)
    lora = init_lora(cfg, lora_cfg, jax.random.PRNGKey(0), num_adapters=n)
    common = (model, lora, datasets, prompts, spec, args.new_tokens)
    flops_tok = train_flops_per_token(cfg, lora_cfg, args.seq_len)
    peak = peak_flops(jax.devices()[0])
    with_eval = args.eval
    r: dict = {"adapters": n}
    sides, warmup = {}, {}
    if args.mode in ("sequential", "both"):
        sides["sequential"] = Sequential(*common)
        # warm-up: one adapter end to end (every adapter runs the same K=1 programs)
        warmup["sequential"] = warm_up(sides["sequential"], with_eval, only=0)
    if args.mode in ("batched", "both", "all"):
        sides["batched"] = Batched(*common)
        warmup["batched"] = warm_up(sides["batched"], with_eval)
    if args.mode in ("ragged", "all"):
        sides["ragged"] = Ragged(*common)
        warmup["ragged"] = warm_up(sides["ragged"], with_eval)
    if args.mode == "all":
        sides["sequential"] = Sequential(*common)
        warmup["sequential"] = warm_up(sides["sequential"], with_eval, only=0)
    peak_before = _peak_bytes()
    res, recompiles = time_sides(sides, with_eval, args.repeats)
    for name, side in sides.items():
        res[name]["tokens"] = side.tokens
        # the sequential warm-up did 1/n of the timed work; the rest of its time (and all the batched warm-up's
        # extra time over its timed run) is compilation and first-call overhead
        done = res[name]["total_s"] / (n if name == "sequential" else 1)
        res[name]["compile_s"] = max(0.0, warmup[name] - done)
    slot_counts = {}  # (token slots computed, real tokens) per side
    if "ragged" in sides:
        slot_counts["ragged"] = (sides["ragged"].stats["token_slots"], sides["ragged"].stats["real_tokens"])
    if "batched" in sides:
        slot_counts["batched"] = (sides["batched"].plan.token_slots(), int(sides["batched"].plan.real_tokens.sum()))
    del sides

    def get(side, key, scale=1.0):
        return None if side not in res or res[side][key] is None else round(res[side][key] * scale, 5)

    r["sequential_s"], r["batched_s"] = get("sequential", "total_s"), get("batched", "total_s")
    r["speedup"] = (round(r["sequential_s"] / r["batched_s"], 3)
                    if r["sequential_s"] is not None and r["batched_s"] else None)
    r["train_sequential_s"], r["train_batched_s"] = get("sequential", "train_s"), get("batched", "train_s")
    r["eval_sequential_s"], r["eval_batched_s"] = get("sequential", "eval_s"), get("batched", "eval_s")
    # process CPU seconds (all threads), least over the runs: the steadier measure on a shared CPU host
    r["cpu_sequential_s"], r["cpu_batched_s"] = get("sequential", "cpu_s"), get("batched", "cpu_s")
    r["train_cpu_sequential_s"], r["train_cpu_batched_s"] = get("sequential", "train_cpu_s"), get("batched",
                                                                                                 "train_cpu_s")
    r["eval_cpu_sequential_s"], r["eval_cpu_batched_s"] = get("sequential", "eval_cpu_s"), get("batched",
                                                                                              "eval_cpu_s")
    r["train_speedup"] = (round(r["train_sequential_s"] / r["train_batched_s"], 3)
                          if r["train_sequential_s"] is not None and r["train_batched_s"] else None)
    r["eval_speedup"] = (round(r["eval_sequential_s"] / r["eval_batched_s"], 3)
                         if r["eval_sequential_s"] is not None and r["eval_batched_s"] else None)
    r["seconds_per_self_edit_batched"] = get("batched", "total_s", 1.0 / n)
    r["seconds_per_self_edit_sequential"] = get("sequential", "total_s", 1.0 / n)
    for side, key in (("batched", "tokens_per_s"), ("sequential", "tokens_per_s_sequential")):
        r[key] = round(res[side]["tokens"] / res[side]["train_s"], 2) if side in res else None
    r["train_tokens"] = next(res[side]["tokens"] for side in ("batched", "ragged", "sequential") if side in res)
    for side, key in (("batched", "mfu"), ("sequential", "mfu_sequential")):
        r[key] = (round(flops_tok * res[side]["tokens"] / res[side]["train_s"] / peak, 5)
                  if side in res and peak else None)
    # the ragged engine (EngineConfig defaults; all N adapters resident): its own time, MFU and useful fraction
    r["ragged_s"], r["train_ragged_s"], r["eval_ragged_s"] = (get("ragged", "total_s"), get("ragged", "train_s"),
                                                              get("ragged", "eval_s"))
    r["cpu_ragged_s"] = get("ragged", "cpu_s")
    r["seconds_per_self_edit_ragged"] = get("ragged", "total_s", 1.0 / n)
    r["tokens_per_s_ragged"] = round(res["ragged"]["tokens"] / res["ragged"]["train_s"], 2) if "ragged" in res else None
    r["mfu_ragged"] = (round(flops_tok * res["ragged"]["tokens"] / res["ragged"]["train_s"] / peak, 5)
                       if "ragged" in res and peak else None)
    r["ragged_speedup_vs_sequential"] = (round(r["sequential_s"] / r["ragged_s"], 3)
                                         if r["sequential_s"] is not None and r["ragged_s"] else None)
    r["ragged_speedup_vs_batched"] = (round(r["batched_s"] / r["ragged_s"], 3)
                                      if r["batched_s"] is not None and r["ragged_s"] else None)
    if slot_counts.get("ragged"):
        r["useful_token_fraction_ragged"] = round(slot_counts["ragged"][1] / slot_counts["ragged"][0], 4)
    if slot_counts.get("batched"):
        r["useful_token_fraction_batched"] = round(slot_counts["batched"][1] / slot_counts["batched"][0], 4)
    r["peak_bytes"] = _peak_bytes() or peak_before  # device peak (None on CPU)
    if args.peer:
        r.update(run_peers(model, lora, datasets, prompts, spec, args, r))
    r["train_flops_per_token"] = flops_tok
    r["peak_flops"] = peak
    r["compile_s"] = round(sum(v["compile_s"] for v in res.values()), 3)
    r["compile_batched_s"] = get("batched", "compile_s")
    r["compile_sequential_s"] = get("sequential", "compile_s")
    r["recompiles"] = recompiles
    for side in res:
        r[f"train_{side}_runs"], r[f"eval_{side}_runs"] = res[side]["train_runs"], res[side]["eval_runs"]
    r.update(seq_len=args.seq_len, steps=args.steps, examples=args.examples, batch_size=args.batch_size,
             questions=args.questions if with_eval else 0, prompt_len=args.prompt_len,
             new_tokens=args.new_tokens if with_eval else 0, with_eval=with_eval, mode=args.mode,
             repeats=args.repeats, lora_rank=lora_cfg.rank, lora_alpha=lora_cfg.alpha,
             targets=",".join(lora_cfg.targets), remat=cfg.remat)
    return r


def run_peers(model, lora: Lora, datasets, prompts, spec: il.TrainSpec, args, ours: dict) -> dict:
    """The peer (experiments/peft_baseline.py, transformers + PEFT, one adapter after another) on the same work:
    mode "same" (our tokens, batches, initial adapters and settings) and mode "original" (eos padding to
    --peer-compat-length with the pads in the loss, a Trainer per adapter); answers of exactly --new-tokens tokens
    (no stop), like ours. Each peer is sequential, so its seconds per self-edit are measured over its first
    --peer-jobs jobs (after one untimed warm-up job). Ratios: the peer's seconds per self-edit over ours (ragged
    when measured, else batched)."""
    from experiments import peft_baseline as peer
    n = min(len(datasets), args.peer_jobs or len(datasets))
    jobs = peer.jobs_from_work(datasets[:n], prompts[:n], spec, lora)
    ref = ours.get("seconds_per_self_edit_ragged") or ours.get("seconds_per_self_edit_batched")
    out = {"peer_jobs": n, "peer_compat_length": args.peer_compat_length}
    for mode in ("same", "original"):
        res = peer.run_peer(model, jobs, mode, lora.config, pad_id=0, eos_id=None,
                            answer_max_tokens=args.new_tokens if args.eval else 0, dtype=args.dtype,
                            compat_length=args.peer_compat_length, max_length=max(args.peer_compat_length,
                                                                                  args.seq_len), warmup=True)
        key = "peer_a" if mode == "same" else "peer_b"
        out[f"{key}_seconds_per_self_edit"] = round(res["seconds_per_self_edit"], 5)
        out[f"{key}_cpu_seconds_per_self_edit"] = round(res["cpu_seconds_per_self_edit"], 5)
        out[f"{key}_train_s"], out[f"{key}_answer_s"] = round(res["train_s"], 4), round(res["answer_s"], 4)
        out[f"{key}_device"] = res["device"]
        out[f"{key}_ratio"] = round(res["seconds_per_self_edit"] / ref, 3) if ref else None
    return out


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _mesh(args):
    """--mesh A,M: None, a device mesh (timing), or for --no-timing an abstract one (counting needs no devices)."""
    if not args.mesh:
        return None
    a, m = (int(x) for x in args.mesh.split(","))
    if args.no_timing:
        return jax.sharding.AbstractMesh((a, m), ("adapter", "model"))
    from seal_jax.sharding import make_mesh
    return make_mesh(a, m)


def bench_workload(args) -> int:
    """One JSON line: the useful token fraction of the ragged engine and of the padded layout on the whole workload
    (counted from their plans: every token slot their compiled training programs compute), and both timed end to
    end on the first --time-jobs jobs in the same process.

    With --mesh A,M the engine runs A adapter shards (each with --slots slots and --tokens-per-step tokens per step):
    its token slots count every shard's positions (a shard with nothing to do counts its slots as waste), and the
    balance of the shards is their busy token slots (steps in which the shard trained something, x R x T) and real
    tokens, the busiest against the mean. Timing then runs both sides on the mesh."""
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mesh = _mesh(args)
    w = workloads.build(args.workload, n_tasks=args.arc_tasks, max_sequences=args.arc_max_sequences)
    args.preset = args.preset or ("tiny-qwen2" if args.workload == "knowledge-seal" else "tiny-llama")
    full = get_preset("qwen2.5-7b" if args.workload == "knowledge-seal" else "llama-3.2-1b")
    cfg = get_preset(args.preset).replace(vocab_size=max(w.vocab_size, full.vocab_size),
                                          max_position_embeddings=full.max_position_embeddings)
    if args.remat:
        cfg = cfg.replace(remat=True)
    model = init_model(cfg, seed=0, dtype=args.dtype)
    real = w.real_tokens
    ragged = workloads.count_ragged(w, model, mesh=mesh, slots=args.slots, tokens_per_step=args.tokens_per_step)
    padded = workloads.count_padded(w)
    assert ragged["real_tokens"] == padded["real_tokens"] == real, (ragged["real_tokens"], padded["real_tokens"], real)
    r = {"workload": w.name, "jobs": len(w.jobs), "real_tokens": real,
         "useful_token_fraction": round(real / ragged["token_slots"], 4), "token_slots": ragged["token_slots"],
         "global_steps": ragged["global_steps"], "shapes": eng.format_shapes(ragged["shapes"]),
         "padded_useful_token_fraction": round(real / padded["token_slots"], 4),
         "padded_token_slots": padded["token_slots"], "padded_adapters_per_batch": w.adapters_per_batch,
         "slots": args.slots or w.slots, "tokens_per_step": args.tokens_per_step or w.tokens_per_step,
         "lora": {"rank": w.lora.rank, "alpha": w.lora.alpha, "targets": list(w.lora.targets)},
         "loss_mode": w.loss_mode, "preset": args.preset, "vocab_size": cfg.vocab_size, "dtype": args.dtype,
         "device": jax.devices()[0].device_kind, "jax": jax.__version__}
    if mesh is not None:
        busy, own = ragged["shard_busy_slots"], ragged["shard_real_tokens"]
        r.update(mesh=args.mesh, shards=ragged["shards"], slots_per_shard=ragged["slots"], shard_busy_slots=busy,
                 shard_real_tokens=own, busiest_shard_ratio=round(max(busy) / (sum(busy) / len(busy)), 4),
                 busiest_shard_real_ratio=round(max(own) / (sum(own) / len(own)), 4))
    if args.workload == "arc-seal":
        r.update(arc_tasks=args.arc_tasks, arc_max_sequences=args.arc_max_sequences)
    if not args.no_timing:
        n = args.time_jobs or (5 if args.workload == "arc-seal" else len(w.jobs))
        sub = w.subset(n)
        if mesh is not None:
            from seal_jax.distributed import shard_model
            model = shard_model(model, mesh)
        r["compile_s"] = round(workloads.warm_up(sub, model, args.slots, args.tokens_per_step, mesh), 2)
        rg = workloads.run_ragged(sub, model, args.slots, args.tokens_per_step, mesh=mesh)
        pd = workloads.run_padded(sub, model, max_steps=args.padded_max_steps, mesh=mesh)
        k = len(sub.jobs)
        for name, res in (("ragged", rg), ("padded", pd)):
            r[f"{name}_time"] = {key: round(res[key], 3) for key in ("train_s", "train_cpu_s", "answer_s",
                                                                      "answer_cpu_s")}
            r[f"{name}_time"].update(token_slots=res["token_slots"], real_tokens=res["real_tokens"])
            r[f"seconds_per_self_edit_{name}"] = round((res["train_s"] + res["answer_s"]) / k, 4)
            r[f"cpu_seconds_per_self_edit_{name}"] = round((res["train_cpu_s"] + res["answer_cpu_s"]) / k, 4)
        r["timed_jobs"] = k
        r["timed_useful_token_fraction"] = round(rg["real_tokens"] / rg["token_slots"], 4)
        r["padded_train_time_scaled"] = pd["train_time_scaled"]
        r["padded_max_steps"] = args.padded_max_steps
        r["speedup"] = round(r["seconds_per_self_edit_padded"] / r["seconds_per_self_edit_ragged"], 3)
        r["cpu_speedup"] = round(r["cpu_seconds_per_self_edit_padded"] / r["cpu_seconds_per_self_edit_ragged"], 3)
    print(json.dumps(r) if args.json else "\n".join(f"{k}: {v}" for k, v in r.items()), flush=True)
    return 0


def _fmt(x, unit="s"):
    return "-" if x is None else f"{x:.3f} {unit}"


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="model shape (default small-qwen2; with --workload tiny-qwen2 / tiny-llama, the real "
                         "model's family, with the real model's vocabulary and positions)")
    ap.add_argument("--adapters", default="1,4,16", help="N, or a comma-separated list of N")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per training example (exactly)")
    ap.add_argument("--steps", type=int, default=10, help="optimiser steps per adapter")
    ap.add_argument("--examples", type=int, default=4, help="training examples per adapter")
    ap.add_argument("--batch-size", type=int, default=1, help="examples per optimiser step")
    ap.add_argument("--questions", type=int, default=4, help="questions per adapter (evaluation)")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens per question")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per question (greedy, no stop)")
    ap.add_argument("--mode", default="both", choices=["sequential", "batched", "ragged", "both", "all"],
                    help="batched = the padded layout (vmap over adapters); ragged = the engine; both = sequential "
                         "+ batched; all = the three")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=64.0)
    ap.add_argument("--targets", default="q,v", help="comma list of q,k,v,o,gate,up,down")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--remat", action="store_true", help="rematerialise each layer in the backward pass")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per phase (best is reported)")
    ap.add_argument("--with-eval", dest="eval", action="store_true", default=True,
                    help="time the whole self-edit evaluation: training + answering its questions (default)")
    ap.add_argument("--no-eval", dest="eval", action="store_false", help="time training only")
    ap.add_argument("--json", action="store_true", help="one JSON line per N")
    ap.add_argument("--peer", action="store_true",
                    help="also run the transformers + PEFT peer (experiments/peft_baseline.py) on the same work")
    ap.add_argument("--peer-jobs", type=int, default=None, help="jobs each peer mode runs (default: all N)")
    ap.add_argument("--peer-compat-length", type=int, default=2048,
                    help="peer mode original: every example eos-padded to this length (the original: 2048)")
    w = ap.add_argument_group("real workloads (--workload): SEAL's self-edits / ARC tasks, real tokenizers")
    w.add_argument("--workload", default=None, choices=list(workloads.WORKLOADS),
                   help="count the token slots of the ragged engine and the padded layout on the whole workload, "
                        "and time both end to end (training + answering) on --time-jobs of its jobs")
    w.add_argument("--time-jobs", type=int, default=None,
                   help="jobs timed on both sides (default: all for knowledge-seal, the first task's for arc-seal)")
    w.add_argument("--slots", type=int, default=None, help="engine slots (default: the workload's)")
    w.add_argument("--tokens-per-step", type=int, default=None, help="engine capacity (default: the workload's)")
    w.add_argument("--padded-max-steps", type=int, default=None,
                   help="train each padded plan only this many steps and scale its time by its steps (constant-cost "
                        "steps); default: train every plan to the end")
    w.add_argument("--arc-tasks", type=int, default=10, help="arc-seal: seal-eval tasks (of 10)")
    w.add_argument("--arc-max-sequences", type=int, default=250, help="arc-seal: the TTT cap (original: 250)")
    w.add_argument("--no-timing", action="store_true", help="count token slots only")
    w.add_argument("--mesh", default=None, metavar="A,M",
                   help="an (adapter, model) mesh: the engine over A shards; counted without devices with "
                        "--no-timing, timed on the mesh's devices otherwise")
    args = ap.parse_args(argv)
    if args.mesh is not None:
        if not args.workload:
            ap.error("--mesh needs --workload")
        bad = mesh_problems(args)
        if bad:
            ap.error(bad[0])
    if args.workload:
        return bench_workload(args)
    if min(args.seq_len, args.steps, args.examples, args.batch_size, args.repeats) < 1:
        ap.error("--seq-len, --steps, --examples, --batch-size and --repeats must be >= 1")
    if args.eval and min(args.questions, args.prompt_len, args.new_tokens) < 1:
        ap.error("--questions, --prompt-len and --new-tokens must be >= 1 with --with-eval")

    # CPU cannot donate buffers; the library donates on purpose, the warning is noise here.
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    args.preset = args.preset or "small-qwen2"
    ns = [int(x) for x in args.adapters.split(",")]
    if min(ns) < 1:
        ap.error("--adapters must be >= 1")
    cfg = get_preset(args.preset)
    if args.remat:
        cfg = cfg.replace(remat=True)
    model = init_model(cfg, seed=0, dtype=args.dtype)
    lora_cfg = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                          targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()))
    dev = jax.devices()[0]
    for n in ns:
        r = bench_one(model, lora_cfg, n, args)
        r.update(preset=args.preset, dtype=args.dtype, device=dev.device_kind, jax=jax.__version__)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            tps = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}"
            print(f"{args.preset} {args.dtype} N={n:<3d} sequential {_fmt(r['sequential_s'])} "
                  f"(train {_fmt(r['train_sequential_s'])}, eval {_fmt(r['eval_sequential_s'])}) | "
                  f"batched {_fmt(r['batched_s'])} (train {_fmt(r['train_batched_s'])}, "
                  f"eval {_fmt(r['eval_batched_s'])}) | speedup {sp} (CPU time {_fmt(r['cpu_sequential_s'])} vs "
                  f"{_fmt(r['cpu_batched_s'])}) | batched train {tps} tok/s, MFU {mfu} | "
                  f"per self-edit {_fmt(r['seconds_per_self_edit_sequential'])} sequential, "
                  f"{_fmt(r['seconds_per_self_edit_batched'])} batched | compile {r['compile_s']:.1f} s"
                  + (f" | RECOMPILES {r['recompiles']}" if r["recompiles"] else ""), flush=True)


if __name__ == "__main__":
    main()
