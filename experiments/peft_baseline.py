"""The peer: the same N self-edit evaluations (LoRA fine-tune + greedy answers) done with transformers + PEFT (PyTorch),
one adapter after another, to time seal-jax against and to check it against.

    python -m experiments.peft_baseline --preset tiny-qwen2 --jobs 4 --mode same --json
    python -m experiments.peft_baseline --preset tiny-qwen2 --jobs 2 --mode original --json

Both modes start from the caller's seal_jax `Model` (written with `seal_jax.save_pretrained` and read back with
`transformers.AutoModelForCausalLM.from_pretrained`, so both sides have identical weights) and from seal_jax's own
initial adapter of each job (`init_lora(cfg, lora_cfg, PRNGKey(init_seed))`, written with `seal_jax.save_adapter` and
loaded with `peft.PeftModel.from_pretrained(base, dir, is_trainable=True)`), and answer each job's questions with
`model.generate` (greedy, the job's questions as one left-padded batch, `answer_max_tokens` new tokens, stop at eos).

mode "same": exactly our engine's training. The job's examples as token ids (cut to `max_length`), targets from
    `loss_mode` ("all": every token; "completion": the example's loss mask); the batches of
    `seal_jax.inner_loop.batch_schedule(len(examples), spec)` in that order, each right-padded to its own longest
    example (attention_mask 0 and labels -100 on padding); transformers' causal-LM loss (mean over the batch's
    targets); `torch.optim.AdamW` (0.9, 0.999, 1e-8, the spec's weight decay) after `clip_grad_norm_(max_grad_norm)`
    (off when <= 0) and the spec's HF schedule (`get_linear/cosine_schedule_with_warmup`,
    `get_constant_schedule_with_warmup`), stepped once per optimiser step. In fp32 the trained adapter equals
    seal_jax's training of the same job to float32 round-off (tests/experiments/test_peft_baseline.py).
mode "original": the original SEAL TTT server's way (docs/seal-knowledge-spec.md, S2): every example's token ids
    padded with `pad_id` (eos in SEAL) to `compat_length` (2048), labels = input_ids *including* the pads,
    attention_mask 0 on the pads; one `transformers.Trainer` per adapter (adamw_torch, the spec's lr, epochs or
    max_steps, batch size, scheduler, warm-up, max_grad_norm and weight decay, its seed; GA 1, no eval, no saving,
    report_to none; bf16 autocast when dtype is bfloat16, as the original's bf16=True). The Trainer draws its own
    per-epoch shuffle (from the spec's seed), as the original's did.

Timing: every phase is measured with time.perf_counter (wall) and time.process_time (this process's CPU seconds, all
threads). Per job: "setup" (write the initial adapter, load it with PEFT), "train" (the optimiser loop, or building
the Trainer and `trainer.train()`), "answer" (`generate`), and "cleanup" (unloading the adapter from the base). The
base model is written and loaded once, outside the per-job timings ("load" in the result). Torch uses every core
(torch.set_num_threads(os.cpu_count())) with passive OpenMP waiting (see OMP_WAIT_POLICY below), and CUDA when it
is available.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
import warnings
from typing import Any, Sequence

import jax

import seal_jax
from seal_jax import inner_loop as il
from seal_jax.lora import Lora, LoraConfig, init_lora
from seal_jax.models.model import Model
from seal_jax.runs import ArgumentParser

MODES = ("same", "original")

# torch's OpenMP threads spin-wait between parallel regions by default; on the shared 2-core CPU host that made tiny
# training steps ~100x slower (12 s against 0.065 s per tiny self-edit with 2 threads). Wait passively unless the
# caller chose otherwise; it takes effect only if torch (its libgomp) is not loaded yet. Reported as omp_wait_policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["MODES", "PeerJob", "jobs_from_work", "make_jobs", "original_features", "run_peer", "main"]


@dataclasses.dataclass(frozen=True)
class PeerJob:
    """One self-edit evaluation: training examples, settings, LoRA init seed, and the questions (prompt token ids).
    `lora`, when given (a single-adapter seal_jax `Lora`), is the initial adapter instead of the seed's."""

    examples: Sequence[il.Example]
    spec: il.TrainSpec
    init_seed: int = 0
    questions: Sequence[Sequence[int]] = ()
    lora: Lora | None = None

    def initial_lora(self, model_cfg, lora_cfg: LoraConfig) -> Lora:
        """The engine's initial adapter of this job: `init_lora(cfg, lora_cfg, PRNGKey(init_seed))` (or `lora`)."""
        if self.lora is not None:
            return self.lora
        return init_lora(model_cfg, lora_cfg, jax.random.PRNGKey(self.init_seed))


class _Clock:
    def __init__(self, sync=None):
        self.sync = sync
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        if self.sync is not None:
            self.sync()
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def original_features(example: il.Example, pad_id: int, compat_length: int = 2048) -> dict[str, list[int]]:
    """The original TTT server's row for one example (tokenizer(..., truncation=True, max_length=compat_length,
    padding="max_length"); labels = input_ids): pads included in the labels, invisible as attention keys."""
    toks = list(example.tokens[:compat_length])
    n = len(toks)
    ids = toks + [pad_id] * (compat_length - n)
    return {"input_ids": ids, "attention_mask": [1] * n + [0] * (compat_length - n), "labels": list(ids)}


def _hf_schedule(torch_opt, spec: il.TrainSpec, total: int):
    import transformers
    if spec.schedule == "linear":
        return transformers.get_linear_schedule_with_warmup(torch_opt, spec.warmup_steps, total)
    if spec.schedule == "cosine":
        return transformers.get_cosine_schedule_with_warmup(torch_opt, spec.warmup_steps, total)
    return transformers.get_constant_schedule_with_warmup(torch_opt, spec.warmup_steps)


def _trainer_schedule(spec: il.TrainSpec) -> str:
    return "constant_with_warmup" if spec.schedule == "constant" else spec.schedule


def _train_same(pm, job: PeerJob, device, loss_mode: str, max_length: int, pad_id: int, counts: dict) -> list[float]:
    """Our engine's batches and optimiser, in torch. Returns the per-step losses."""
    import torch
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    steps = il.batch_schedule(len(job.examples), job.spec)
    opt = torch.optim.AdamW(params, lr=job.spec.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=job.spec.weight_decay)
    sched = _hf_schedule(opt, job.spec, len(steps))
    rows = []
    for ex in job.examples:
        toks = list(ex.tokens[:max_length])
        mask = list(ex.mask()[:max_length]) if loss_mode == "completion" else [1] * len(toks)
        rows.append((toks, mask))
    losses = []
    pm.train()  # LoRA dropout (if any) is on in training, as in PEFT
    for idx in steps:
        batch = [rows[int(i)] for i in idx]
        T = max(len(t) for t, _ in batch)
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), T), dtype=torch.long)
        labels = torch.full((len(batch), T), -100, dtype=torch.long)
        for r, (t, m) in enumerate(batch):
            ids[r, :len(t)] = torch.tensor(t)
            att[r, :len(t)] = 1
            labels[r, :len(t)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(t), -100)
        counts["real"] += int(att.sum())
        counts["padded"] += int(att.numel())
        counts["targets"] += int((labels[:, 1:] != -100).sum())
        ids, att, labels = ids.to(device), att.to(device), labels.to(device)
        opt.zero_grad(set_to_none=True)
        loss = pm(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        if job.spec.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, job.spec.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.detach())
    return [float(x) for x in losses]


def _train_original(pm, job: PeerJob, device, pad_id: int, compat_length: int, bf16: bool, workdir: str,
                    counts: dict) -> list[float]:
    """One `transformers.Trainer` over the eos-padded rows, as the original TTT server. Returns the per-step losses."""
    import torch
    import transformers

    feats = [original_features(ex, pad_id, compat_length) for ex in job.examples]

    class _Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(feats)

        def __getitem__(self, i):
            return {k: torch.tensor(v, dtype=torch.long) for k, v in feats[i].items()}

    losses: list = []
    seen: list = []

    class _Trainer(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if return_outputs else out
            att, labels = inputs["attention_mask"], inputs["labels"]
            seen.append((att.sum(), att.numel(), (labels[:, 1:] != -100).sum()))  # read after training: no syncs
            losses.append(loss.detach())
            return out

    spec = job.spec
    args = transformers.TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=spec.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=spec.epochs, max_steps=spec.max_steps if spec.max_steps is not None else -1,
        learning_rate=spec.learning_rate, lr_scheduler_type=_trainer_schedule(spec), warmup_steps=spec.warmup_steps,
        max_grad_norm=spec.max_grad_norm if spec.max_grad_norm > 0 else 0.0, weight_decay=spec.weight_decay,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=spec.seed,
        bf16=bf16, use_cpu=device.type == "cpu", eval_strategy="no", save_strategy="no", report_to="none",
        logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, remove_unused_columns=False)
    trainer = _Trainer(model=pm, args=args, train_dataset=_Rows())
    for cb in (transformers.PrinterCallback, transformers.ProgressCallback):  # keep stdout clean (--json)
        trainer.remove_callback(cb)
    trainer.train()
    for real, padded, targets in seen:
        counts["real"] += int(real)
        counts["padded"] += int(padded)
        counts["targets"] += int(targets)
    return [float(x) for x in losses]


def _answer(model, questions: Sequence[Sequence[int]], device, pad_id: int, eos_id: int | None, max_new: int):
    """Greedy answers to one job's questions in one left-padded `generate` batch; the eos and what follows dropped
    (eos_id None: no stop, every answer max_new tokens)."""
    import torch
    import transformers
    if not questions:
        return []
    T = max(len(q) for q in questions)
    ids = torch.full((len(questions), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(questions), T), dtype=torch.long)
    for r, q in enumerate(questions):
        ids[r, T - len(q):] = torch.tensor(list(q))
        att[r, T - len(q):] = 1
    gc = transformers.GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos_id,
                                       pad_token_id=pad_id, bos_token_id=None)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=gc)
    answers = []
    for row in out[:, T:].tolist():
        answers.append(row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return answers


def run_peer(model: Model, jobs: Sequence[PeerJob], mode: str, lora_cfg: LoraConfig, pad_id: int, eos_id: int | None,
             answer_max_tokens: int, dtype: str = "float32", compat_length: int = 2048, max_length: int = 2048,
             loss_mode: str = "all", device: str | None = None, return_adapters: bool = False,
             num_threads: int | None = None, warmup: bool = False) -> dict[str, Any]:
    """Run the jobs' self-edit evaluations one after another with transformers + PEFT (see the module docstring).

    model: the base (its weights are written with `seal_jax.save_pretrained` and read by transformers in `dtype`).
    mode: "same" (our engine's batches and loss) or "original" (eos-padded rows, pads in the loss, HF Trainer).
    loss_mode: mode "same" only, as the engine's: "all" or "completion".
    device: a torch device name (default: "cuda" when available, else "cpu").
    return_adapters: also return each job's trained adapter as a seal_jax `Lora` (read back from PEFT's saved
        adapter, outside the timings).
    num_threads: torch's intra-op threads while the peer runs (default os.cpu_count(); restored afterwards).
    warmup: first run job 0 once, untimed and discarded (torch's first-call costs: kernels, allocator, Trainer and
        accelerate imports), as the seal_jax benchmark warms up (compiles) before its timed runs; its wall and CPU
        seconds are reported as warmup_s / warmup_cpu_s.

    Returns a dict:
      jobs: per job {train_s, train_cpu_s, answer_s, answer_cpu_s, setup_s, setup_cpu_s, cleanup_s, cleanup_cpu_s,
            total_s, total_cpu_s, steps, real_tokens, padded_tokens, target_tokens, losses, answers[, lora]};
      totals of those (train_s, ..., total_s, total_cpu_s, real_tokens, padded_tokens, target_tokens, steps);
      seconds_per_self_edit / cpu_seconds_per_self_edit (total over jobs / N); load_s / load_cpu_s (base model
      written and read once); warmup_s / warmup_cpu_s (None without warmup); answers (per job, token lists); mode,
      device, dtype, torch / transformers / peft versions, threads.
    """
    import torch
    import transformers

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if loss_mode not in ("all", "completion"):
        raise ValueError(f"loss_mode {loss_mode!r}: the peer's mode 'same' trains 'all' or 'completion' "
                         "(the original's padded loss is mode='original')")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype {dtype!r}: choose float32 or bfloat16")
    threads = num_threads or os.cpu_count() or 1
    # process-wide settings, restored afterwards: torch threads, transformers' log level and progress bars, warnings
    threads_before, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="peft")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return _run(model, jobs, mode, lora_cfg, pad_id, eos_id, answer_max_tokens, dtype, compat_length,
                        max_length, loss_mode, device, return_adapters, threads, warmup)
    finally:
        torch.set_num_threads(threads_before)
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def _run(model, jobs, mode, lora_cfg, pad_id, eos_id, answer_max_tokens, dtype, compat_length, max_length, loss_mode,
         device, return_adapters, threads, warmup) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    result: dict[str, Any] = {"mode": mode, "device": str(dev), "dtype": dtype, "threads": threads,
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "peft": peft.__version__, "loss_mode": loss_mode if mode == "same" else "compat_padding",
                              "compat_length": compat_length if mode == "original" else None, "jobs": []}
    with tempfile.TemporaryDirectory(prefix="peft_peer_") as tmp:
        c = _Clock(sync)
        base_dir = os.path.join(tmp, "base")
        seal_jax.save_pretrained(model, base_dir)
        base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype).to(dev)
        base.eval()
        result["load_s"], result["load_cpu_s"] = c.stop()

        result["warmup_s"] = result["warmup_cpu_s"] = None
        order = ([(-1, jobs[0])] if warmup and jobs else []) + list(enumerate(jobs))
        for j, job in order:
            rec: dict[str, Any] = {}
            counts = {"real": 0, "padded": 0, "targets": 0}
            c = _Clock(sync)
            init_dir = os.path.join(tmp, f"init_{j}")  # j = -1: the warm-up run
            seal_jax.save_adapter(job.initial_lora(model.config, lora_cfg), init_dir, model)
            torch.manual_seed(job.spec.seed)
            pm = peft.PeftModel.from_pretrained(base, init_dir, is_trainable=True)
            pm.to(dev)
            rec["setup_s"], rec["setup_cpu_s"] = c.stop()

            c = _Clock(sync)
            if mode == "same":
                losses = _train_same(pm, job, dev, loss_mode, max_length, pad_id, counts)
            else:
                losses = _train_original(pm, job, dev, pad_id, compat_length, dtype == "bfloat16",
                                         os.path.join(tmp, f"trainer_{j}"), counts)
            rec["train_s"], rec["train_cpu_s"] = c.stop()

            c = _Clock(sync)
            answers = _answer(pm, job.questions, dev, pad_id, eos_id, answer_max_tokens)
            rec["answer_s"], rec["answer_cpu_s"] = c.stop()

            if return_adapters:  # outside the timings
                out_dir = os.path.join(tmp, f"trained_{j}")
                pm.save_pretrained(out_dir)
                rec["lora"] = seal_jax.load_adapter(out_dir, model, dtype=lora_cfg.dtype)

            c = _Clock(sync)
            base = pm.unload()  # the base modules back, without the LoRA layers (and unmerged): the next job's base
            del pm
            rec["cleanup_s"], rec["cleanup_cpu_s"] = c.stop()

            rec["total_s"] = rec["setup_s"] + rec["train_s"] + rec["answer_s"] + rec["cleanup_s"]
            rec["total_cpu_s"] = rec["setup_cpu_s"] + rec["train_cpu_s"] + rec["answer_cpu_s"] + rec["cleanup_cpu_s"]
            if j < 0:
                result["warmup_s"], result["warmup_cpu_s"] = rec["total_s"], rec["total_cpu_s"]
                continue
            rec.update(steps=len(losses), real_tokens=counts["real"], padded_tokens=counts["padded"],
                       target_tokens=counts["targets"], losses=losses, answers=answers)
            result["jobs"].append(rec)

    n = len(jobs)
    for key in ("setup_s", "setup_cpu_s", "train_s", "train_cpu_s", "answer_s", "answer_cpu_s", "cleanup_s",
                "cleanup_cpu_s", "total_s", "total_cpu_s", "steps", "real_tokens", "padded_tokens", "target_tokens"):
        result[key] = sum(r[key] for r in result["jobs"])
    result["n_jobs"] = n
    result["seconds_per_self_edit"] = result["total_s"] / n if n else None
    result["cpu_seconds_per_self_edit"] = result["total_cpu_s"] / n if n else None
    result["answers"] = [r["answers"] for r in result["jobs"]]
    return result


def jobs_from_work(datasets: Sequence[Sequence[il.Example]], prompts: Sequence[Sequence[Sequence[int]]],
                   spec: il.TrainSpec | Sequence[il.TrainSpec], lora: Lora | None = None) -> list[PeerJob]:
    """PeerJobs for the work of experiments/bench_inner_loop.py (`make_work`'s datasets and prompts): job k gets
    adapter k of `lora` (a batch of adapters, e.g. the benchmark's) as its initial adapter, or init seed k."""
    specs = [spec] * len(datasets) if isinstance(spec, il.TrainSpec) else list(spec)
    return [PeerJob(list(d), sp, init_seed=k, questions=[list(q) for q in p],
                    lora=None if lora is None else lora.adapter(k))
            for k, (d, p, sp) in enumerate(zip(datasets, prompts, specs))]


def make_jobs(cfg, n: int, examples: int, questions: int, seq_len: int, prompt_len: int, spec: il.TrainSpec,
              seed: int = 0) -> list[PeerJob]:
    """Random jobs drawn as experiments/bench_inner_loop.py's `make_work` draws them (the same tokens per seed): per
    job `examples` sequences of exactly seq_len tokens and `questions` prompts of prompt_len tokens; init seed k."""
    from experiments.bench_inner_loop import make_work
    return jobs_from_work(*make_work(cfg, n, examples, questions, seq_len, prompt_len, seed), spec)


def _summary(r: dict) -> dict:
    keep = {k: v for k, v in r.items() if k not in ("jobs", "answers")}
    keep["per_job"] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in j.items()
                        if k not in ("losses", "answers", "lora")} for j in r["jobs"]]
    keep["final_losses"] = [j["losses"][-1] if j["losses"] else None for j in r["jobs"]]
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in keep.items()}


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-qwen2")
    ap.add_argument("--jobs", type=int, default=4, help="self-edit evaluations (one adapter after another)")
    ap.add_argument("--mode", default="same", choices=MODES)
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per training example (exactly)")
    ap.add_argument("--examples", type=int, default=4, help="training examples per job")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per job (overrides --epochs)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16, help="max new tokens per answer (greedy, stop at eos)")
    ap.add_argument("--compat-length", type=int, default=2048, help="mode original: rows padded to this length")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=64.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="time the first job cold (default: one untimed warm-up run of job 0 first)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)

    cfg = seal_jax.get_preset(args.preset)
    model = seal_jax.init_model(cfg, seed=0, dtype=args.dtype)
    lora_cfg = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                          targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()))
    spec = il.TrainSpec(learning_rate=args.lr, epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size)
    jobs = make_jobs(cfg, args.jobs, args.examples, args.questions, args.seq_len, args.prompt_len, spec)
    eos = cfg.eos_token_ids[0]
    r = run_peer(model, jobs, args.mode, lora_cfg, pad_id=eos, eos_id=eos, answer_max_tokens=args.new_tokens,
                 dtype=args.dtype, compat_length=args.compat_length, device=args.device, warmup=args.warmup,
                 num_threads=args.threads)
    out = _summary(r)
    out.update(preset=args.preset, seq_len=args.seq_len, examples=args.examples, epochs=args.epochs,
               batch_size=args.batch_size, questions=args.questions, prompt_len=args.prompt_len,
               new_tokens=args.new_tokens, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
               targets=args.targets)
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        print(f"{args.preset} {args.dtype} {args.mode} N={args.jobs} on {r['device']}: "
              f"{r['seconds_per_self_edit']:.3f} s / self-edit ({r['cpu_seconds_per_self_edit']:.3f} CPU s); "
              f"train {r['train_s']:.3f} s, answer {r['answer_s']:.3f} s, setup {r['setup_s']:.3f} s; "
              f"{r['real_tokens']} real / {r['padded_tokens']} computed tokens", flush=True)


if __name__ == "__main__":
    main()
