"""The knowledge-incorporation experiment (SQuAD), as a library: typed configs (which are also the command line of
`python -m experiments.knowledge_incorporation`) and the resumable stages each command runs.

    from seal_jax.knowledge import experiment as kx
    kx.run(kx.EvalConfig(model="QWEN_DIR", data="squad_val.json", out="runs/base"))        # == the `eval` command
    kx.run(kx.RestEMConfig(model=..., train_data="iter0_train.json", eval_data=..., rounds=2, out="runs/restem"))

Stages: self-edits (`seal.sample_self_edits`) -> baseline answers -> batched TTT + quiz + grading
(`ttt.evaluate_stream`, the ragged engine) -> results.json in the original's schema; ReST-EM selects with
`seal.select` and fine-tunes with `seal.m_step`; CPT trains one adapter on every passage; continual merges self-edits
in turn. Every stage writes to the run directory (`seal_jax.runs.RunDir`) and is skipped when its output is already
there, so re-running a killed command finishes without redoing finished work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from typing import Any, Literal

from seal_jax.cli import (MeshFlags, ModelFlags, flag, load_model, mesh_problems, model_problems, place_model,
                          problems, split_names, target_problems, with_defaults)
from seal_jax.runs import RunDir, resume_records, resume_stream, write_json, write_text

__all__ = ["COMMANDS", "CPTConfig", "ContinualConfig", "EvalConfig", "ORIGINAL", "RestEMConfig", "check", "notes",
           "run"]


# ------------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfEditFlags:
    """self-edits"""

    prompt_variant: str = flag("implications", "implications | implications-long | implications-very-long | "
                                               "rewrite | self-qa")
    k: int = flag(5, "self-edits per passage (0 = train on the passage only)", minimum=0)
    temperature: float = flag(1.0, "sampling temperature", finite=True)
    top_p: float = flag(0.95, "nucleus sampling", finite=True)
    max_self_edit_tokens: int = flag(8192, "new tokens per self-edit", minimum=1)
    instruct_model: bool = flag(False, "the policy is an instruct (chat) model, the original's --instruct_model "
                                       "branch: self-edit and answer prompts are chat turns (ours, or its Qwen "
                                       "strings with --prompts), generation also stops at the end-of-turn token "
                                       "(<|im_end|>), and with --prompts the LLM judge gets its instruct grading "
                                       "string")
    split_newlines: bool = flag(True, "one training sequence per line of a self-edit")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TTTFlags:
    """test-time training (defaults: the original's)"""

    lora_rank: int = flag(32, "LoRA rank", minimum=1)
    lora_alpha: float = flag(64.0, "LoRA alpha", finite=True)
    lora_targets: str = flag("q,v", "comma-separated projections")
    lr: float = flag(1e-3, "learning rate", finite=True)
    epochs: int = flag(10, "passes over a self-edit's sequences", minimum=0)
    batch_size: int = flag(1, "sequences per step", minimum=1)
    schedule: Literal["constant", "linear", "cosine"] = flag("linear", "learning-rate schedule")
    warmup_steps: int = flag(0, "linear warm-up steps", minimum=0)
    max_grad_norm: float = flag(1.0, "gradient clipping", finite=True)
    weight_decay: float = flag(0.0, "AdamW weight decay", finite=True)
    loss_mode: Literal["compat_padding", "all"] = flag(
        "compat_padding", "compat_padding = the original (eos padding to --max-length, pads in the loss); all = real "
                          "tokens + one eos, bucketed (much faster)")
    max_length: int = flag(2048, "longest training sequence (tokens)", minimum=2)
    pack: bool = flag(False, "pack sequences into rows (with --loss-mode all)")
    answer_max_tokens: int = flag(64, "new tokens per answer", minimum=1)
    engine: Literal["ragged", "padded"] = flag(
        "ragged", "ragged = jobs streamed through adapter slots, packed token streams (seal_jax.engine; sharded "
                  "with --mesh); padded = K jobs per vmapped batch, rows padded (the comparison layout)")
    slots: int = flag(64, "ragged: the most adapters resident at once, per adapter shard of --mesh (fewer when "
                          "fewer jobs wait)", minimum=1)
    tokens_per_step: int = flag(4096, "ragged: largest packed stream per step, per adapter shard", minimum=1)
    adapters_per_batch: int = flag(16, "padded: self-edit evaluations trained together", minimum=1)
    eval_times: int = flag(1, "repetitions of each self-edit evaluation", minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradingFlags:
    """grading"""

    grader: Literal["offline", "llm", "openai"] = flag("offline", "who judges an answer against the gold answer")
    judge_model: str | None = flag(None, "HF dir of the LLM judge (--grader llm; default: --model)")
    openai_base_url: str | None = flag(None, "an OpenAI-compatible endpoint (--grader openai)")
    openai_model: str = flag("gpt-4.1", "the judge model at that endpoint")
    prompts: str | None = flag(None, "the original's self-edit and grading prompts (--grader llm/openai) from a file "
                                     "written by `python -m experiments.import_seal_prompts`")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFlags:
    """run"""

    out: str = flag(help="run directory")
    distributed: bool = flag(False, "initialise jax.distributed (multi-host; with --mesh over every process's "
                                    "devices)")
    no_progress: bool = flag(False, "no progress bars")


# `--fidelity original`: the original's behaviour wherever ours deliberately differs (README, "Fidelity switches").
# Everything else already defaults to the original's (LoRA q,v r32, pads in the loss, no improvement filter, ...);
# the prompt wording needs the user's --prompts file.
ORIGINAL = dict(rank_split_newlines="original")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FidelityFlags:
    """fidelity"""

    fidelity: Literal["clean", "original"] = flag(
        "clean", "original: every switch that restores the original's behaviour at once (" +
                 ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in ORIGINAL.items()) + "; the defaults are the "
                 "original's elsewhere); with --prompts FILE also its wording. A flag given explicitly still wins")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Common(FidelityFlags, RunFlags, MeshFlags, GradingFlags, TTTFlags, SelfEditFlags, ModelFlags):
    """flags every command takes (fields, and --help's groups, in reverse order of the bases: model first)"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(Common):
    """eval: single-passage SEAL evaluation (the paper's main table)"""

    data: str | None = flag(None, "SEAL-format passages (squad_val.json)")
    self_edits: str | None = flag(None, "SEAL-format file with completions (skips generation)")
    n_passages: int = flag(200, "passages to evaluate", minimum=1)
    start: int = flag(0, "first passage (after the original's seed-42 shuffle)", minimum=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestEMConfig(Common):
    """rest-em: rank self-edits on training passages, SFT the best, merge, repeat"""

    train_data: str = flag(help="training passages (SEAL format; completions used for round 0 when present unless "
                                "--regenerate); one file for every round, or one per round, comma-separated, as the "
                                "original ranked new passages each round (iter0_train.json,iter1_train.json)")
    n_train_passages: int = flag(50, "training passages per round", minimum=1)
    regenerate: bool = flag(False, "sample round-0 self-edits even if the file has some")
    eval_data: str | None = flag(None, "passages to evaluate every policy on (SEAL format)")
    n_eval_passages: int = flag(200, "evaluation passages", minimum=1)
    eval_k: int = flag(1, "self-edits per evaluation passage", minimum=1)
    rounds: int = flag(2, "ReST-EM rounds", minimum=0)
    rank_eval_times: int = flag(3, "repetitions per self-edit when ranking", minimum=1)
    sft_rank: int = flag(64, "M-step LoRA rank", minimum=1)
    sft_alpha: float = flag(128.0, "M-step LoRA alpha", finite=True)
    sft_targets: str = flag("q,k,v,o,gate,up,down", "M-step LoRA projections")
    sft_lr: float = flag(3e-4, "M-step learning rate", finite=True)
    sft_epochs: int = flag(2, "M-step epochs", minimum=1)
    sft_batch_size: int = flag(10, "M-step batch size", minimum=1)
    sft_checkpoint_every: int = flag(50, "SFT steps between resumable checkpoints (0 = only at the end)")
    keep_ties: Literal["first"] = flag("first", "tie-break: the earliest self-edit")
    rank_split_newlines: Literal["same", "original"] = flag(
        "same", "how each round's ranking cuts self-edits into sequences: as --split-newlines (same), or as the "
                "original's runs, split in round 0 and whole lines after (original)")
    require_improvement: bool = flag(False, "drop passages whose best self-edit does not beat the baseline (the "
                                            "original keeps them)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CPTConfig(with_defaults(Common, "CPTDefaults", k=5, epochs=3, batch_size=8, split_newlines=False)):
    """cpt: continued pretraining, all passages' sequences in one adapter"""

    data: str | None = flag(None, "SEAL-format passages")
    self_edits: str | None = flag(None, "SEAL-format file with completions (skips generation)")
    n_passages: int = flag(200, "passages", minimum=1)
    full_finetune: bool = flag(False, "train all weights instead of one LoRA")
    eval_question_limit: int | None = flag(None, "quiz only this many questions: the original's debugging switch "
                                                 "(all questions shuffled with seed 43, the first N kept)", minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinualConfig(Common):
    """continual: continual self-edits, the forgetting matrix"""

    data: str = flag(help="SEAL-format passages")
    n_sequences: int = flag(8, "random sequences of passages (averaged)", minimum=1)
    n_datapoints: int = flag(8, "passages (self-edits merged in turn) per sequence", minimum=1)


def check(cfg: Common) -> list[str]:
    """Everything wrong with a config, one line each, before any work (the command line prints the first)."""
    out = model_problems(cfg) + problems(cfg) + mesh_problems(cfg)
    if cfg.distributed and not isinstance(cfg, EvalConfig):
        out.append(f"--distributed runs the eval command only (multi-host {command_of(cfg)} is not supported yet: "
                   f"run it in one process, on one host's devices with --mesh)")
    out += target_problems(lora_targets=cfg.lora_targets,
                           **({"sft_targets": cfg.sft_targets} if isinstance(cfg, RestEMConfig) else {}))
    return out


def notes(cfg: Common) -> list[str]:
    """What a user should know about a valid config before it runs."""
    if cfg.fidelity == "original" and not cfg.prompts:
        return ["--fidelity original without --prompts keeps our prompt wording (import the original's: "
                "python -m experiments.import_seal_prompts YOUR_SEAL_CHECKOUT --out FILE)"]
    return []


def rank_split_newlines(mode: str, round_index: int, split_newlines: bool) -> bool:
    """split_newlines of ReST-EM round `round_index`'s ranking: as every other stage (same), or as the original's
    scripts ran it (original): rank_iter0 split, rank_iter1 did not (spec 7b.6)."""
    return split_newlines if mode == "same" else round_index == 0


# ------------------------------------------------------------------------------------------------ context
@dataclasses.dataclass
class Context:
    cfg: Any  # one of the command configs
    run: RunDir
    model: Any
    tokenizer: Any
    grade: Any
    ttt: Any
    mesh: Any = None
    prompts: Any = None  # seal_jax.original_prompts.SealPrompts from --prompts, or None (our wording)


def command_of(cfg) -> str:
    return next(name for name, (cls, _) in COMMANDS.items() if type(cfg) is cls)


def load_context(cfg) -> Context:
    import jax

    import seal_jax
    from seal_jax.knowledge.grader import make_grader
    from seal_jax.knowledge.prompts import PromptFormat
    from seal_jax.knowledge.ttt import TTTConfig
    from seal_jax.lora import LoraConfig
    from seal_jax.original_prompts import PromptsError, load as load_prompts
    from seal_jax.tokenizer import Tokenizer

    if cfg.distributed:
        from seal_jax import distributed
        distributed.initialize()
    command = command_of(cfg)
    try:  # a bad prompts file stops the run before any work
        prompts = load_prompts(cfg.prompts) if cfg.prompts else None
        if prompts is None:
            fmt = PromptFormat(instruct=cfg.instruct_model)
        elif cfg.instruct_model:  # the original's instruct branch: its Qwen ChatML strings
            fmt = PromptFormat(True, prompts.instruct("knowledge_self_edit_instruct"),
                               prompts.instruct("knowledge_answer_instruct"))
            if cfg.grader == "llm":
                prompts.instruct("grade_instruct")
        else:
            fmt = PromptFormat(False, None if command == "cpt" else prompts.self_edit_template(cfg.prompt_variant))
    except PromptsError as e:
        raise SystemExit(f"error: {e}") from None
    run = RunDir(cfg.out, {"command": command, **dataclasses.asdict(cfg)},
                 resume_free=("no_progress", "out", "sft_checkpoint_every"), writer=is_main())
    model, tokenizer = load_model(cfg)
    if cfg.instruct_model and (fmt.self_edit_template is None or fmt.answer_template is None) \
            and not tokenizer.hf.chat_template:
        raise SystemExit(f"error: --instruct-model needs a tokenizer with a chat template; "
                         f"{cfg.tokenizer or cfg.model} has none")
    bad = mesh_problems(cfg, jax.device_count())  # known once jax.distributed has joined the processes
    if bad:
        raise SystemExit(f"error: {bad[0]}")
    model, mesh = place_model(cfg, model)
    words = {} if prompts is None or cfg.grader == "offline" else {"template": prompts.grade}  # the original's
    if words and cfg.instruct_model and cfg.grader == "llm":  # its instruct judge string (ChatML written out)
        words = {"template": prompts.grade_instruct, "chat": False}
    if cfg.grader == "llm":
        judge = seal_jax.load_pretrained(cfg.judge_model, dtype=cfg.dtype) if cfg.judge_model else model
        grader = make_grader("llm", model=judge, tokenizer=Tokenizer.from_dir(cfg.judge_model) if
                             cfg.judge_model else tokenizer, **words)
    elif cfg.grader == "openai":
        grader = make_grader("openai", base_url=cfg.openai_base_url, model=cfg.openai_model, **words)
        grader.check()  # an unreachable endpoint stops the run here, not after grading everything False
    else:
        grader = make_grader("offline")
    ttt = TTTConfig(lora=LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                    targets=split_names(cfg.lora_targets)),
                    learning_rate=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, schedule=cfg.schedule,
                    warmup_steps=cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm,
                    weight_decay=cfg.weight_decay, loss_mode=cfg.loss_mode, max_length=cfg.max_length,
                    split_newlines=cfg.split_newlines, answer_max_tokens=cfg.answer_max_tokens,
                    engine=cfg.engine, slots=cfg.slots, tokens_per_step=cfg.tokens_per_step,
                    adapters_per_batch=cfg.adapters_per_batch, pack=cfg.pack, prompt_format=fmt)
    run.event("start", command=command, devices=jax.device_count(), processes=jax.process_count())
    grade = grader.grade
    if words:  # the original's grading prompt holds "Topic: {title}" before each question
        import functools
        grade = functools.partial(grader.grade)
        grade.topic_questions = True
    return Context(cfg, run, model, tokenizer, grade, ttt, mesh, prompts)


def is_main() -> bool:
    import jax
    return jax.process_index() == 0


# ------------------------------------------------------------------------------------------------ stages
def passages_for(data_path: str | None, self_edits_path: str | None, n: int, start: int = 0):
    """The original's selection: a seed-42 shuffle of the data file, then [start:start+n]. A self-edit file already
    holds the selected passages in order (with their completions), so it is sliced directly."""
    from seal_jax.knowledge.data import load_passages, select_passages
    if not self_edits_path and not data_path:
        raise SystemExit("error: give --data (passages) or --self-edits (passages with completions)")
    path = self_edits_path or data_path
    try:
        everything = load_passages(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if start >= len(everything):
        raise SystemExit(f"error: --start {start} is beyond the {len(everything)} passages of {path}")
    chosen = everything[start:start + n] if self_edits_path else select_passages(everything, n, start=start)
    if len(chosen) < n:
        print(f"note: {path} has {len(chosen)} passages from --start {start}, fewer than the {n} asked",
              file=sys.stderr)
    kept = [p for p in chosen if p.questions and p.context.strip()]
    if len(kept) < len(chosen):
        print(f"note: {len(chosen) - len(kept)} of {len(chosen)} passages have no questions or no text and are left "
              f"out", file=sys.stderr)
    if not kept:
        raise SystemExit(f"error: no passage of {path} has text and questions to evaluate")
    return kept


def self_edit_stage(ctx: Context, passages, path: str, k: int, model=None, desc="self-edits"):
    """Sample k self-edits per passage from the policy (`seal_jax.seal.sample_self_edits`), or reuse the file written
    by an earlier run."""
    from seal_jax import seal
    from seal_jax.distributed import from_main
    from seal_jax.knowledge.data import load_passages, passages_from_records

    written = from_main([p.to_dict() for p in load_passages(path)] if is_main() and os.path.exists(path) else None)
    if written is not None:  # an earlier run's file (process 0's, in a multi-host run)
        return passages_from_records(written, source=path)
    model = model or ctx.model
    a = ctx.cfg
    fmt = ctx.ttt.prompt_format
    prompts = [fmt.self_edit_prompt(p, a.prompt_variant, ctx.tokenizer) for p in passages]
    if a.max_self_edit_tokens >= model.config.max_position_embeddings:
        raise SystemExit(f"error: --max-self-edit-tokens {a.max_self_edit_tokens} does not fit the model's "
                         f"{model.config.max_position_embeddings} positions (prompt included); lower it")
    ids = [fmt.encode(ctx.tokenizer, text) for text in prompts]
    owners = [(i, j) for i in range(len(passages)) for j in range(k)]
    sampling = seal.Sampling(temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_self_edit_tokens,
                             stop_token_ids=tuple(fmt.stop_ids(ctx.tokenizer)))

    def work(part):  # one generate call per 64 samples; each sample has its own seed, so batching cannot change it
        edits = seal.sample_self_edits(model, ctx.tokenizer, ids, part, sampling, a.seed, mesh=ctx.mesh)
        return [{"key": f"{e.item}/{e.sample}", "text": e.text} for e in edits]

    # every finished chunk is kept (a JSONL beside the file), so a killed stage resumes with the samples it had
    done = resume_records(path + ".partial.jsonl", owners, key=lambda o: f"{o[0]}/{o[1]}", record_key="key",
                          work=work, chunk=64, desc=desc, no_progress=a.no_progress, write=is_main())
    completions = [tuple(done[f"{i}/{j}"]["text"] for j in range(k)) for i in range(len(passages))]
    out = [dataclasses.replace(p, completions=c, prompt=pr) for p, c, pr in zip(passages, completions, prompts)]
    if is_main():
        write_json(path, [p.to_dict() for p in out])
        if os.path.exists(path + ".partial.jsonl"):
            os.remove(path + ".partial.jsonl")  # its samples are all in the file now
    ctx.run.event("self_edits", path=path, passages=len(out), k=k)
    return out


def baseline_stage(ctx: Context, passages, path: str, model=None) -> dict[int, dict]:
    """Baseline answers and verdicts, once per passage (all unanswered passages in one generation call)."""
    from seal_jax.knowledge.ttt import answer_questions, grade_passage

    def work(todo):
        answers = answer_questions(model or ctx.model, ctx.tokenizer, [passages[i] for i in todo], ctx.ttt)
        return [{"passage_index": i, "answers": a, "correct": grade_passage(ctx.grade, passages[i], a)}
                for i, a in zip(todo, answers)]

    return resume_records(path, range(len(passages)), key=lambda i: i, record_key="passage_index", work=work,
                          chunk=max(len(passages), 1), no_progress=True, write=is_main(),
                          on_done=lambda rows, _: ctx.run.event("baseline", path=path, passages=len(rows)))


def jobs_for(passages, k: int, reps: int) -> tuple[list, dict[str, str]]:
    """Every (passage, self-edit, repetition) evaluation, and the ones that cannot be trained with the reason.

    The original's rule picks a passage's first k non-empty completions; a completion it skips for being empty (up to
    k of those the passage gives, at least one per passage) stays in the results as a failed sample with reward 0
    instead of vanishing from the table. k = 0: the passage alone (one job per passage). Completion indices are
    positions in the passage's own list."""
    from seal_jax.knowledge.ttt import Job
    jobs, unusable = [], {}
    for i, p in enumerate(passages):
        if k == 0:
            picked = [(0, "", None)]
        else:
            picked = [(j, c, None) for j, c in enumerate(p.completions) if c.strip()][:k]
            want = min(k, max(len(p.completions), 1))
            empty = [j for j, c in enumerate(p.completions) if not c.strip()]
            spare = empty + list(range(len(p.completions), len(p.completions) + want))
            picked += [(j, "", "the self-edit is empty" if j < len(p.completions) else "no self-edit was given")
                       for j in spare[:want - len(picked)]]
        for j, c, reason in picked:
            for r in range(reps):
                job = Job(i, j, r, c)
                jobs.append(job)
                if reason:
                    unusable[job.key] = reason
    return jobs, unusable


def ttt_stage(ctx: Context, passages, jobs, path: str, model=None, desc="TTT",
              unusable: dict[str, str] | None = None, stats: dict | None = None) -> list[dict]:
    """Every job's self-edit evaluation; finished jobs (by key) are read back, the rest streamed through the engine
    and appended as they finish; `unusable` jobs (key -> reason) are recorded as failed samples without training.
    stats: filled with the training layout's accounting of the jobs trained by this call (none when all were
    read back)."""
    from seal_jax.knowledge.ttt import evaluate_stream, failed_record
    unusable = unusable or {}

    def work(todo):
        bad = [j for j in todo if j.key in unusable]
        if bad:
            yield [failed_record(j, passages[j.passage_index], ctx.cfg.seed, unusable[j.key]) for j in bad]
        good = [j for j in todo if j.key not in unusable]
        if good:
            yield from evaluate_stream(model or ctx.model, ctx.tokenizer, passages, good, ctx.ttt, ctx.grade,
                                       seed=ctx.cfg.seed, mesh=ctx.mesh, stats=stats)

    def on_done(recs, seconds):
        ctx.run.event("ttt_batch", jobs=len(recs), seconds=seconds, seconds_per_self_edit=seconds / max(len(recs), 1))

    done = resume_stream(path, jobs, key=lambda j: j.key, record_key="key", work=work, desc=desc,
                         no_progress=ctx.cfg.no_progress, write=is_main(), on_done=on_done)
    return [done[j.key] for j in jobs]


def settings(ctx: Context) -> dict:
    a = ctx.cfg
    return {"timestamp": time.strftime("%Y-%m-%d %H:%M:%S"), "exp_name": os.path.basename(os.path.abspath(a.out)),
            "split_newlines": ctx.ttt.split_newlines, "k_completions": a.k, "eval_times": a.eval_times,
            "grader": a.grader, "loss_mode": a.loss_mode, "fidelity": a.fidelity,
            "lora_params": {"rank": a.lora_rank, "alpha": a.lora_alpha, "dropout": 0.0, "epochs": a.epochs,
                            "lr": a.lr, "batch_size": a.batch_size, "grad_accum_steps": 1,
                            "targets": a.lora_targets}}


def evaluate(ctx: Context, passages, out_dir: str, k: int, reps: int, model=None, label="") -> dict:
    """Self-edits (from the file or the policy) -> baseline -> batched TTT -> results.json (original's schema)."""
    from seal_jax.knowledge.report import single_passage_results
    os.makedirs(out_dir, exist_ok=True)
    if k > 0 and not any(p.completions for p in passages):  # plain passages: the policy writes the self-edits
        passages = self_edit_stage(ctx, passages, os.path.join(out_dir, "self_edits.json"), k, model,
                                   desc=f"{label}self-edits")
    jobs, unusable = jobs_for(passages, k, reps)
    if unusable:  # a user's self-edits are never replaced: an empty or missing one is a failed sample
        print(f"note: {len(unusable)} of {len(jobs)} self-edit evaluations have no usable self-edit (empty or "
              f"missing); they count as failed samples with reward 0", file=sys.stderr)
    baseline = baseline_stage(ctx, passages, os.path.join(out_dir, "baseline.jsonl"), model)
    stats: dict = {}
    evals = ttt_stage(ctx, passages, jobs, os.path.join(out_dir, "evals.jsonl"), model, desc=f"{label}TTT",
                      unusable=unusable, stats=stats)
    if stats:  # what this invocation trained, and how (resumed runs add one event per invocation)
        ctx.run.event("training", path=out_dir, **training_record(ctx, stats))
    results = single_passage_results(passages, baseline, evals, dict(settings(ctx), n_articles=len(passages),
                                                                     k_completions=k, eval_times=reps))
    results["training"] = {"layout": ctx.ttt.engine, "mesh": ctx.cfg.mesh}
    if is_main():
        write_json(os.path.join(out_dir, "results.json"), results)
    return results


def training_record(ctx: Context, stats: dict) -> dict:
    """How this invocation trained its self-edit adapters (a "training" event): the layout, the mesh and the
    layout's accounting (token slots computed over every adapter shard, real tokens, useful fraction; the engine's
    steps, calls and per-shard figures). Jobs read back from an earlier run are not in it."""
    out = {"layout": ctx.ttt.engine, "mesh": ctx.cfg.mesh, **stats}
    if stats.get("token_slots"):
        out["useful_token_fraction"] = round(stats["real_tokens"] / stats["token_slots"], 4)
    return out


def summary_row(name: str, results: dict, which: str) -> dict:
    """A table row of `markdown_table`; an adapter row carries its failed self-edit evaluations."""
    o = results["overall"]
    row = {"name": name, "accuracy": o[f"{which}_mean_accuracy"], "ci95": o[f"{which}_ci95"], "n": o["n_articles"]}
    if which == "adapter":
        row.update(failed=o.get("failed_self_edits", 0), total=o.get("n_self_edit_evaluations", 0))
    return row


def write_summary(ctx: Context, title: str, rows: list[dict], extra: str = "") -> str:
    from seal_jax.knowledge.report import markdown_table
    return ctx.run.write_summary(f"# {title}\n\n{markdown_table(rows)}\n{extra}", write=is_main())


# ------------------------------------------------------------------------------------------------ commands
def run_eval(ctx: Context) -> dict:
    a = ctx.cfg
    passages = passages_for(a.data, a.self_edits, a.n_passages, a.start)
    results = evaluate(ctx, passages, ctx.run.path, a.k, a.eval_times)
    name = "passage only" if a.k == 0 else ("self-edits from " + (os.path.basename(a.self_edits) if a.self_edits
                                                                  else "the model"))
    write_summary(ctx, "Knowledge incorporation: single passage",
                  [summary_row("base model (no TTT)", results, "baseline"),
                   summary_row(f"TTT on {name}", results, "adapter")])
    return results


def select_best(passages, results: dict, require_improvement: bool) -> tuple[list[dict], list[dict]]:
    """Best-of-k per passage by mean adapter accuracy over reps (`seal_jax.seal.select`: ties go to the earliest
    self-edit, as the original's stable sort; a self-edit that failed every rep is never kept). Returns (SFT rows,
    per-passage selection records)."""
    from seal_jax import seal
    outcomes = []
    for art in results["articles"]:
        for j, c in enumerate(art["completions"]):
            edit = seal.SelfEdit(art["passage_index"], j, (), c["text"])
            outcomes.append(seal.Outcome(edit, c["stats"]["adapter_mean"], art["stats"]["baseline_mean"],
                                         failed=c["stats"]["failed_reps"] >= results["eval_times"]))
    chosen = seal.select(outcomes, seal.SelectRule("best", require_improvement))
    sft, records = [], []
    for art, r in zip(results["articles"], chosen.per_item):
        records.append({"passage_index": art["passage_index"], "title": art["title"], "adapter_means": r["rewards"],
                        "chosen": r["best"], "tie": r["tie"], "baseline": r["baseline"], "improved": r["improved"],
                        "kept": bool(r["chosen"])})
    for o in chosen.kept:
        sft.append({"prompt": passages[o.edit.item].prompt, "completion": o.edit.text})
    return sft, records


def round_passages(train_data: str, rounds: int, n: int, regenerate: bool = False) -> list[list]:
    """The training passages of each ReST-EM round (`--train-data`): one file for every round (ours), or one file per
    round, comma-separated (the original ranked new passages each round). Round 0 keeps a file's completions (unless
    `regenerate`); later rounds sample their self-edits from the current policy. Every file is read and checked
    before any work."""
    from seal_jax.knowledge.data import load_passages
    files = [f for f in train_data.split(",") if f]
    if len(files) > 1 and len(files) != rounds:
        raise SystemExit(f"error: --train-data names {len(files)} files but --rounds is {rounds}: give one file for "
                         f"every round, or one per round")
    loaded = [load_passages(f)[:n] for f in files]
    for f, ps in zip(files, loaded):
        if not ps:
            raise SystemExit(f"error: {f} holds no passages")
    per_round = [loaded[r] if len(loaded) > 1 else loaded[0] for r in range(max(rounds, 1))]
    return [ps if r == 0 and not regenerate else [dataclasses.replace(p, completions=()) for p in ps]
            for r, ps in enumerate(per_round)]


def run_rest_em(ctx: Context) -> list[dict]:
    from seal_jax import seal, sft as sft_lib
    from seal_jax.checkpoints.state import load_policy, save_policy
    from seal_jax.knowledge.data import load_passages
    from seal_jax.lora import LoraConfig
    a = ctx.cfg
    per_round = round_passages(a.train_data, a.rounds, a.n_train_passages, a.regenerate)
    eval_passages = passages_for(a.eval_data, None, a.n_eval_passages) if a.eval_data else []
    policies = [ctx.model]
    rows, evals = [], []
    for r in range(a.rounds + 1):
        policy = policies[r]
        if eval_passages:
            res = evaluate(ctx, [dataclasses.replace(p, completions=()) for p in eval_passages],
                           ctx.run.dir(f"eval_policy_{r}"), a.eval_k, a.eval_times, policy,
                           label=f"policy {r} eval ")
            evals.append(res)
            if r == 0:
                rows.append(summary_row("base model (no TTT)", res, "baseline"))
            rows.append(summary_row("self-edit TTT, iteration 0" if r == 0 else f"SEAL, ReST-EM round {r}",
                                    res, "adapter"))
        if r == a.rounds:
            break
        rdir = ctx.run.dir(f"round_{r}")
        nxt = load_policy(os.path.join(rdir, "policy"), ctx.model)
        if nxt is None:
            round_train = per_round[r]
            split = rank_split_newlines(a.rank_split_newlines, r, ctx.ttt.split_newlines)
            rank_ctx = dataclasses.replace(ctx, ttt=dataclasses.replace(ctx.ttt, split_newlines=split))
            res = evaluate(rank_ctx, round_train, rdir, a.k, a.rank_eval_times, policy, label=f"round {r} E-step ")
            passages_used = (round_train if all(p.completions for p in round_train)
                             else load_passages(os.path.join(rdir, "self_edits.json")))
            sft_rows, selection = select_best(passages_used, res, a.require_improvement)
            if is_main():
                write_json(os.path.join(rdir, "selection.json"), selection)
                # the SFT set, in the original's format (written whole and atomically: read back only as a record)
                write_text(os.path.join(rdir, "sft.jsonl"), "".join(json.dumps(x) + "\n" for x in sft_rows))
            ctx.run.event("selection", round=r, kept=len(sft_rows), ties=sum(s["tie"] for s in selection),
                          not_improved=sum(not s["improved"] for s in selection))
            if not sft_rows:
                raise SystemExit(f"error: round {r} kept no self-edits (all failed to improve); nothing to train on")
            cfg = sft_lib.SFTConfig(lora=LoraConfig(rank=a.sft_rank, alpha=a.sft_alpha,
                                                    targets=split_names(a.sft_targets)),
                                    learning_rate=a.sft_lr, epochs=a.sft_epochs, batch_size=a.sft_batch_size,
                                    seed=a.seed + r, checkpoint_every=a.sft_checkpoint_every)
            pairs = [seal.TrainingPair(tuple(ctx.ttt.prompt_format.encode(ctx.tokenizer, x["prompt"])),
                                       tuple(ctx.tokenizer.encode(x["completion"], add_bos=False))) for x in sft_rows]
            nxt, _ = seal.m_step(policy, pairs, ctx.tokenizer.eos_token_id, cfg,
                                 checkpoint_dir=os.path.join(rdir, "sft_checkpoints"))
            save_policy(os.path.join(rdir, "policy"), nxt)
            ctx.run.event("policy", round=r + 1)
        policies.append(nxt)
    if rows:
        write_summary(ctx, "Knowledge incorporation: ReST-EM", rows)
    return evals


def run_cpt(ctx: Context) -> dict:
    import numpy as np
    from seal_jax import inner_loop as il
    from seal_jax.knowledge.report import ci95
    from seal_jax.knowledge.sequences import cpt_eval_questions, cpt_train_sequences
    from seal_jax.knowledge.ttt import answer_questions, grade_passage, training_examples
    from seal_jax.lora import init_lora, stack_adapters
    import jax
    a = ctx.cfg
    passages = passages_for(a.data, a.self_edits, a.n_passages)
    if a.k > 0 and not all(p.completions for p in passages):
        passages = self_edit_stage(ctx, passages, ctx.run.file("self_edits.json"), a.k)
    asked = cpt_eval_questions([len(p.questions) for p in passages], a.eval_question_limit)
    keep = {p: sorted(q for pp, q in asked if pp == p) for p in range(len(passages))}
    quiz = [dataclasses.replace(p, questions=tuple(p.questions[q] for q in keep[i])) for i, p in enumerate(passages)]
    baseline = baseline_stage(ctx, quiz, ctx.run.file("baseline.jsonl"))
    result_path = ctx.run.file("cpt.json")
    if not os.path.exists(result_path):
        seqs = cpt_train_sequences(passages, a.k, split_newlines=a.split_newlines)
        examples = training_examples(ctx.tokenizer, seqs, ctx.ttt.loss_mode)
        spec = il.TrainSpec(learning_rate=a.lr, schedule=a.schedule, epochs=a.epochs, batch_size=a.batch_size,
                            max_grad_norm=a.max_grad_norm, weight_decay=a.weight_decay, seed=a.seed)
        pad = ctx.tokenizer.pad_token_id or 0
        plan = il.build_plan([examples], [spec], loss_mode=ctx.ttt.loss_mode, pad_id=pad, max_length=a.max_length,
                             compat_length=a.max_length, pack=a.pack)
        if a.full_finetune:
            from seal_jax.full_ft import full_finetune
            model, losses = full_finetune(ctx.model, plan)
            lora = None
        else:
            model = ctx.model
            state = il.train_adapters(model, stack_adapters([init_lora(model.config, ctx.ttt.lora,
                                                                       jax.random.PRNGKey(a.seed))]), plan)
            lora = state.lora.adapter(0)
            losses = np.asarray(state.losses[0, :int(state.step[0])]).tolist()
        answers = answer_questions(model, ctx.tokenizer, quiz, ctx.ttt, lora=lora)
        per = [{"passage_index": i, "title": p.title, "question_indices": keep[i], "answers": ans,
                "correct": grade_passage(ctx.grade, p, ans)} for i, (p, ans) in enumerate(zip(quiz, answers))]
        if is_main():
            write_json(result_path, {"train_sequences": len(seqs), "losses": losses, "per_passage": per})
    cpt = json.load(open(result_path))
    base_c = [c for i in range(len(passages)) for c in baseline[i]["correct"]]
    adapt_c = [c for r in cpt["per_passage"] for c in r["correct"]]
    overall = {"baseline_accuracy": float(np.mean(base_c)), "adapter_accuracy": float(np.mean(adapt_c)),
               "gain": float(np.mean(adapt_c) - np.mean(base_c)), "n_questions": len(adapt_c),
               "train_sequences": cpt["train_sequences"], "eval_questions": len(asked),
               "full_finetune": a.full_finetune}
    results = {"overall": overall, **settings(ctx), "per_passage": cpt["per_passage"]}
    if is_main():
        write_json(ctx.run.file("results.json"), results)
    rows = [{"name": "base model", "accuracy": overall["baseline_accuracy"], "ci95": ci95(base_c),
             "n": len(passages)},
            {"name": f"CPT on {len(passages)} passages ({'full FT' if a.full_finetune else 'LoRA'})",
             "accuracy": overall["adapter_accuracy"], "ci95": ci95(adapt_c), "n": len(passages)}]
    write_summary(ctx, "Knowledge incorporation: continued pretraining (micro accuracy)", rows)
    return results


def run_continual(ctx: Context) -> dict:
    import numpy as np
    from seal_jax.checkpoints.state import StateCheckpointer
    from seal_jax.knowledge.data import load_passages
    from seal_jax.knowledge.ttt import Job, answer_questions, grade_passage
    from seal_jax.lora import Lora, init_lora, merge
    import jax
    a = ctx.cfg
    everything = load_passages(a.data)
    n, S = a.n_datapoints, a.n_sequences
    matrices = []
    for s in range(S):
        sdir = ctx.run.dir(f"sequence_{s}")
        mpath = os.path.join(sdir, "matrix.json")
        if os.path.exists(mpath):
            matrices.append(np.asarray(json.load(open(mpath))["matrix"]))
            continue
        chosen = random.Random(a.seed + s).sample(everything, n)
        state_path = os.path.join(sdir, "progress.json")
        prog = json.load(open(state_path)) if os.path.exists(state_path) else {"matrix": [[0.0] * n], "step": 0}
        model = ctx.model
        for k in range(prog["step"]):  # re-apply the merges of finished steps (adapters are small, merges cheap)
            ck = StateCheckpointer(os.path.join(sdir, f"adapter_{k}"), max_to_keep=1)
            like = init_lora(model.config, ctx.ttt.lora, jax.random.PRNGKey(0))
            model = merge(model, Lora(ctx.ttt.lora, ck.restore(like.weights)))
        if prog["step"] == 0:
            answers = answer_questions(model, ctx.tokenizer, chosen, ctx.ttt)
            prog["matrix"] = [[float(np.mean(grade_passage(ctx.grade, p, ans))) for p, ans in zip(chosen, answers)]]
        for k in range(prog["step"], n):
            p = self_edit_stage(ctx, [chosen[k]], os.path.join(sdir, f"self_edit_{k}.json"), 1, model,
                                desc=f"seq {s} step {k} self-edit")[0]
            job = Job(k, 0, 0, p.completions[0] if p.completions else "")
            # train on self-edit k, then answer passages 0..k with that adapter (one multi-passage job)
            lora, row = _continual_step(ctx, model, chosen, p, k, job)
            prog["matrix"].append(row + [0.0] * (n - len(row)))
            StateCheckpointer(os.path.join(sdir, f"adapter_{k}"), max_to_keep=1).save(0, lora.weights)
            model = merge(model, lora)
            prog["step"] = k + 1
            if is_main():
                write_json(state_path, prog)
        m = np.asarray(prog["matrix"])
        matrices.append(m)
        if is_main():
            write_json(mpath, {"matrix": m.tolist(), "passages": [c.title for c in chosen]})
    mean, std = np.mean(matrices, axis=0), np.std(matrices, axis=0)
    results = {"mean_over_sequences": mean.tolist(), "std_over_sequences": std.tolist(), "n_sequences": S,
               "n_datapoints": n, "dataset": a.data, **settings(ctx)}
    if is_main():
        write_json(ctx.run.file("results.json"), results)
        heatmap(mean, ctx.run.file("forgetting.png"))
    lines = ["| after edit | " + " | ".join(f"p{j}" for j in range(n)) + " |", "|---" * (n + 1) + "|"]
    for i, row in enumerate(mean):
        cells = [f"{100 * v:.1f}" if (i == 0 or j < i) else "" for j, v in enumerate(row)]
        lines.append(f"| {'none' if i == 0 else i} | " + " | ".join(cells) + " |")
    ctx.run.write_summary("# Continual self-edits: accuracy on passage j after i edits\n\n" + "\n".join(lines) + "\n",
                          write=is_main())
    return results


def _continual_step(ctx: Context, model, chosen, p, k: int, job) -> tuple[Any, list[float]]:
    """Train one adapter on passage k's self-edit; accuracy of the adapted model on passages 0..k."""
    import jax
    import numpy as np
    from seal_jax import inner_loop as il
    from seal_jax.knowledge.sequences import build_train_sequences
    from seal_jax.knowledge.ttt import answer_questions, grade_passage, training_examples
    from seal_jax.lora import init_lora, stack_adapters
    seqs = build_train_sequences(job.completion, p, split_newlines=ctx.ttt.split_newlines)
    ex = training_examples(ctx.tokenizer, seqs, ctx.ttt.loss_mode)
    seed = job.seed(ctx.cfg.seed)
    spec = il.TrainSpec(learning_rate=ctx.ttt.learning_rate, epochs=ctx.ttt.epochs, batch_size=ctx.ttt.batch_size,
                        max_grad_norm=ctx.ttt.max_grad_norm, seed=seed)
    plan = il.build_plan([ex], [spec], loss_mode=ctx.ttt.loss_mode, pad_id=ctx.tokenizer.pad_token_id or 0,
                         max_length=ctx.ttt.max_length, compat_length=ctx.ttt.max_length)
    state = il.train_adapters(model, stack_adapters([init_lora(model.config, ctx.ttt.lora,
                                                               jax.random.PRNGKey(seed))]), plan)
    lora = state.lora.adapter(0)
    answers = answer_questions(model, ctx.tokenizer, chosen[:k + 1], ctx.ttt, lora=lora)
    return lora, [float(np.mean(grade_passage(ctx.grade, q, ans))) for q, ans in zip(chosen[:k + 1], answers)]


def heatmap(matrix, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    n_rows, n = matrix.shape
    mask = np.array([[not (i == 0 or j < i) for j in range(n)] for i in range(n_rows)])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n, 1 + 0.5 * n_rows))
    im = ax.imshow(np.ma.array(matrix, mask=mask), cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("passage")
    ax.set_ylabel("after edit")
    ax.set_yticks(range(n_rows), ["none"] + [str(i) for i in range(1, n_rows)])
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)




# ------------------------------------------------------------------------------------------------ entry point
COMMANDS = {"eval": (EvalConfig, run_eval), "rest-em": (RestEMConfig, run_rest_em), "cpt": (CPTConfig, run_cpt),
            "continual": (ContinualConfig, run_continual)}


def run(cfg) -> dict | list[dict]:
    """Run the command of config `cfg` (an `EvalConfig`, `RestEMConfig`, `CPTConfig` or `ContinualConfig`) in its
    run directory, resuming what an earlier run there finished, and return its results: what results.json holds
    (eval, cpt, continual; the original's schema with CIs), or for rest-em every policy's evaluation (policy 0, the
    base, first; empty without `eval_data`). A bad config raises ValueError (its first problem) before any work."""
    bad = check(cfg)
    if bad:
        raise ValueError(bad[0])
    for line in notes(cfg):
        print(f"note: {line}", file=sys.stderr)
    ctx = load_context(cfg)
    results = COMMANDS[command_of(cfg)][1](ctx)
    ctx.run.event("done", command=command_of(cfg))
    if cfg.distributed:
        from seal_jax.distributed import barrier
        barrier("knowledge_incorporation_done")
    return results
