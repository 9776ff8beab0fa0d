"""SEAL knowledge incorporation (SQuAD): self-edits -> batched TTT -> QA without the passage -> grading; ReST-EM; CPT;
continual self-edits. Every stage writes to the run directory and is skipped when its output is already there, so
re-running a killed command finishes without redoing finished work.

    # the paper's single-passage rows (precomputed self-edits, e.g. the GPT-4.1 row):
    python -m experiments.knowledge_incorporation eval --model QWEN_DIR --self-edits gpt4_1_val.json \\
        --n-passages 200 --k 1 --eval-times 1 --out runs/gpt41
    # self-edits written by the model itself (implications prompt, k samples at T=1, top-p 0.95):
    python -m experiments.knowledge_incorporation eval --model QWEN_DIR --data squad_val.json --out runs/base
    # passage only (the "train on passage" row): --k 0
    # ReST-EM: rank k x r self-edits per training passage, SFT the best, merge, repeat; evaluate every policy
    python -m experiments.knowledge_incorporation rest-em --model QWEN_DIR --train-data iter0_train.json \\
        --eval-data squad_val.json --rounds 2 --out runs/restem
    python -m experiments.knowledge_incorporation cpt --model QWEN_DIR --self-edits base_val.json --out runs/cpt
    python -m experiments.knowledge_incorporation continual --model QWEN_DIR --data squad_val.json --out runs/cont

Run directory: config.json (the resolved flags), events.jsonl, self_edits.json, baseline.jsonl, evals.jsonl,
results.json (the original's schema + CIs), summary.md; rest-em adds round_R/ and policy_R/ (orbax); continual adds
forgetting.png. A sweep over any flag is a shell loop, one run directory per point:
    for lr in 3e-4 1e-3 3e-3; do python -m experiments.knowledge_incorporation eval ... --lr $lr --out runs/lr_$lr; done
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from typing import Any

from seal_jax.runs import (ArgumentParser, RunDir, check_flags, cli, resume_records, resume_stream, write_json,
                           write_text)

PROG = "experiments.knowledge_incorporation"


# ------------------------------------------------------------------------------------------------ flags
def add_common(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF checkpoint dir (config.json + safetensors) of the policy")
    g.add_argument("--preset", default=None, help="a random-init preset instead of --model (smoke tests)")
    g.add_argument("--tokenizer", default=None, help="tokenizer dir (default: --model)")
    g.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    g.add_argument("--seed", type=int, default=0, help="TTT seeds derive from it (the original used the clock)")
    g = ap.add_argument_group("self-edits")
    g.add_argument("--prompt-variant", default="implications",
                   help="implications | implications-long | implications-very-long | rewrite | self-qa")
    g.add_argument("--k", type=int, default=5, help="self-edits per passage (0 = train on the passage only)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-self-edit-tokens", type=int, default=8192)
    g.add_argument("--instruct-model", action="store_true",
                   help="the policy is an instruct (chat) model, the original's --instruct_model branch: self-edit "
                        "and answer prompts are chat turns (ours, or its Qwen strings with --prompts), generation "
                        "also stops at the end-of-turn token (<|im_end|>), and with --prompts the LLM judge gets its "
                        "instruct grading string")
    g.add_argument("--split-newlines", action=argparse.BooleanOptionalAction, default=True)
    g = ap.add_argument_group("test-time training (defaults: the original's)")
    g.add_argument("--lora-rank", type=int, default=32)
    g.add_argument("--lora-alpha", type=float, default=64.0)
    g.add_argument("--lora-targets", default="q,v")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--schedule", default="linear", choices=["constant", "linear", "cosine"])
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--loss-mode", default="compat_padding", choices=["compat_padding", "all"],
                   help="compat_padding = the original (eos padding to --max-length, pads in the loss); "
                        "all = real tokens + one eos, bucketed (much faster)")
    g.add_argument("--max-length", type=int, default=2048)
    g.add_argument("--pack", action="store_true", help="pack sequences into rows (with --loss-mode all)")
    g.add_argument("--answer-max-tokens", type=int, default=64)
    g.add_argument("--engine", default="ragged", choices=["ragged", "padded"],
                   help="ragged = jobs streamed through adapter slots, packed token streams (seal_jax.engine); "
                        "padded = K jobs per vmapped batch, rows padded (the previous layout; used with --mesh)")
    g.add_argument("--slots", type=int, default=64, help="ragged: adapters resident at once")
    g.add_argument("--tokens-per-step", type=int, default=4096, help="ragged: largest packed stream per step")
    g.add_argument("--adapters-per-batch", type=int, default=16, help="padded: self-edit evaluations trained together")
    g.add_argument("--eval-times", type=int, default=1, help="repetitions of each self-edit evaluation")
    g = ap.add_argument_group("grading")
    g.add_argument("--grader", default="offline", choices=["offline", "llm", "openai"])
    g.add_argument("--judge-model", default=None, help="HF dir of the LLM judge (--grader llm; default: --model)")
    g.add_argument("--openai-base-url", default=None)
    g.add_argument("--openai-model", default="gpt-4.1")
    g.add_argument("--prompts", default=None,
                   help="the original's self-edit and grading prompts (--grader llm/openai) from a file written by "
                        "`python -m experiments.import_seal_prompts`")
    g = ap.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--mesh", default=None, help="ADAPTER,MODEL device mesh (default: one device)")
    g.add_argument("--distributed", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g = ap.add_argument_group("fidelity")
    g.add_argument("--fidelity", default="clean", choices=["clean", "original"],
                   help="original: every switch that restores the original's behaviour at once (" +
                        ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in ORIGINAL.items()) + "; the defaults "
                        "are the original's elsewhere); with --prompts FILE also its wording. A flag given "
                        "explicitly still wins")


# `--fidelity original`: the original's behaviour wherever ours deliberately differs (README, "Fidelity switches").
# Everything else already defaults to the original's (LoRA q,v r32, pads in the loss, no improvement filter, ...);
# the prompt wording needs the user's --prompts file.
ORIGINAL = dict(rank_split_newlines="original")


def rank_split_newlines(mode: str, round_index: int, split_newlines: bool) -> bool:
    """split_newlines of ReST-EM round `round_index`'s ranking: as every other stage (same), or as the original's
    scripts ran it (original): rank_iter0 split, rank_iter1 did not (spec 7b.6)."""
    return split_newlines if mode == "same" else round_index == 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="single-passage SEAL evaluation (the paper's main table)")
    add_common(e)
    e.add_argument("--data", default=None, help="SEAL-format passages (squad_val.json)")
    e.add_argument("--self-edits", default=None, help="SEAL-format file with completions (skips generation)")
    e.add_argument("--n-passages", type=int, default=200)
    e.add_argument("--start", type=int, default=0)

    r = sub.add_parser("rest-em", help="ReST-EM: rank self-edits on training passages, SFT the best, merge, repeat")
    add_common(r)
    r.add_argument("--train-data", required=True,
                   help="training passages (SEAL format; completions used for round 0 when present unless "
                        "--regenerate); one file for every round, or one per round, comma-separated, as the original "
                        "ranked new passages each round (iter0_train.json,iter1_train.json)")
    r.add_argument("--n-train-passages", type=int, default=50)
    r.add_argument("--regenerate", action="store_true", help="sample round-0 self-edits even if the file has some")
    r.add_argument("--eval-data", default=None, help="passages to evaluate every policy on (SEAL format)")
    r.add_argument("--n-eval-passages", type=int, default=200)
    r.add_argument("--eval-k", type=int, default=1)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--rank-eval-times", type=int, default=3, help="repetitions per self-edit when ranking")
    r.add_argument("--sft-rank", type=int, default=64)
    r.add_argument("--sft-alpha", type=float, default=128.0)
    r.add_argument("--sft-targets", default="q,k,v,o,gate,up,down")
    r.add_argument("--sft-lr", type=float, default=3e-4)
    r.add_argument("--sft-epochs", type=int, default=2)
    r.add_argument("--sft-batch-size", type=int, default=10)
    r.add_argument("--sft-checkpoint-every", type=int, default=50,
                   help="SFT steps between resumable checkpoints (0 = only at the end)")
    r.add_argument("--keep-ties", choices=["first"], default="first", help="tie-break: the earliest self-edit")
    r.add_argument("--rank-split-newlines", default="same", choices=["same", "original"],
                   help="how each round's ranking cuts self-edits into sequences: as --split-newlines (same), or as "
                        "the original's runs, split in round 0 and whole lines after (original)")
    r.add_argument("--require-improvement", action="store_true",
                   help="drop passages whose best self-edit does not beat the baseline (the original keeps them)")

    c = sub.add_parser("cpt", help="continued pretraining: all passages' sequences in one adapter")
    add_common(c)
    c.add_argument("--data", default=None)
    c.add_argument("--self-edits", default=None)
    c.add_argument("--n-passages", type=int, default=200)
    c.add_argument("--full-finetune", action="store_true", help="train all weights instead of one LoRA")
    c.add_argument("--eval-question-limit", type=int, default=None,
                   help="quiz only this many questions: the original's debugging switch (all questions shuffled "
                        "with seed 43, the first N kept)")
    c.set_defaults(k=5, epochs=3, batch_size=8, split_newlines=False)

    t = sub.add_parser("continual", help="continual self-edits: the forgetting matrix")
    add_common(t)
    t.add_argument("--data", required=True)
    t.add_argument("--n-sequences", type=int, default=8)
    t.add_argument("--n-datapoints", type=int, default=8)
    args = ap.parse_args(argv)
    if args.fidelity == "original":  # the original's behaviours become the defaults; explicit flags still win
        for parser in sub.choices.values():
            parser.set_defaults(**{k: v for k, v in ORIGINAL.items()
                                   if any(a.dest == k for a in parser._actions)})
        args = ap.parse_args(argv)
        if not args.prompts:
            print("note: --fidelity original without --prompts keeps our prompt wording (import the original's: "
                  "python -m experiments.import_seal_prompts YOUR_SEAL_CHECKOUT --out FILE)", file=sys.stderr)
    check_flags(ap, args, minimum=dict(
        k=0, eval_times=1, lora_rank=1, epochs=0, batch_size=1, warmup_steps=0, max_length=2, answer_max_tokens=1,
        slots=1, tokens_per_step=1, adapters_per_batch=1, max_self_edit_tokens=1, n_passages=1, start=0, rounds=0,
        rank_eval_times=1, eval_k=1, n_train_passages=1, n_eval_passages=1, sft_rank=1, sft_epochs=1,
        sft_batch_size=1, n_sequences=1, n_datapoints=1),
        nonnegative=("lr", "lora_alpha", "max_grad_norm", "weight_decay", "temperature", "top_p", "sft_lr",
                     "sft_alpha"))
    if getattr(args, "eval_question_limit", None) is not None and args.eval_question_limit < 1:
        ap.error(f"--eval-question-limit must be at least 1, got {args.eval_question_limit}")
    from seal_jax.lora import ALL_TARGETS
    for flag, names in (("--lora-targets", args.lora_targets), ("--sft-targets", getattr(args, "sft_targets", "q"))):
        bad = [t for t in names.split(",") if t not in ALL_TARGETS]
        if bad:
            ap.error(f"{flag}: unknown LoRA target(s) {bad}; choose from {','.join(ALL_TARGETS)}")
    if args.mesh is not None:
        parts = args.mesh.split(",")
        if len(parts) != 2 or not all(x.strip().isdigit() and int(x) > 0 for x in parts):
            ap.error(f"--mesh must be ADAPTER,MODEL (two positive integers), got {args.mesh!r}")
    if (args.model is None) == (args.preset is None):
        ap.error("give exactly one of --model DIR or --preset NAME")
    if args.preset and not args.tokenizer:
        ap.error("--preset needs --tokenizer DIR")
    return args


# ------------------------------------------------------------------------------------------------ context
@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    run: RunDir
    model: Any
    tokenizer: Any
    grade: Any
    ttt: Any
    mesh: Any = None
    prompts: Any = None  # seal_jax.original_prompts.SealPrompts from --prompts, or None (our wording)


def load_context(args) -> Context:
    import jax

    import seal_jax
    from seal_jax.knowledge.grader import make_grader
    from seal_jax.knowledge.ttt import TTTConfig
    from seal_jax.lora import LoraConfig
    from seal_jax.tokenizer import Tokenizer

    if args.distributed:
        from seal_jax import distributed
        distributed.initialize()
    from seal_jax.original_prompts import PromptsError, load as load_prompts
    from seal_jax.knowledge.prompts import PromptFormat
    try:  # a bad prompts file stops the run before any work
        prompts = load_prompts(args.prompts) if args.prompts else None
        if prompts is None:
            fmt = PromptFormat(instruct=args.instruct_model)
        elif args.instruct_model:  # the original's instruct branch: its Qwen ChatML strings
            fmt = PromptFormat(True, prompts.instruct("knowledge_self_edit_instruct"),
                               prompts.instruct("knowledge_answer_instruct"))
            if args.grader == "llm":
                prompts.instruct("grade_instruct")
        else:
            fmt = PromptFormat(False, None if args.command == "cpt" else prompts.self_edit_template(args.prompt_variant))
    except PromptsError as e:
        raise SystemExit(f"error: {e}") from None
    run = RunDir(args.out, vars(args), resume_free=("no_progress", "out", "sft_checkpoint_every"))
    tokenizer = Tokenizer.from_dir(args.tokenizer or args.model)
    if args.model:
        model = seal_jax.load_pretrained(args.model, dtype=args.dtype)
    else:
        model = seal_jax.init_model(seal_jax.get_preset(args.preset), seed=args.seed, dtype=args.dtype)
    if args.instruct_model and (fmt.self_edit_template is None or fmt.answer_template is None) \
            and not tokenizer.hf.chat_template:
        raise SystemExit(f"error: --instruct-model needs a tokenizer with a chat template; "
                         f"{args.tokenizer or args.model} has none")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"error: tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{model.config.vocab_size}")
    mesh = None
    if args.mesh:
        from seal_jax import distributed
        a, m = (int(x) for x in args.mesh.split(","))
        mesh = distributed.make_mesh(a, m)
        model = distributed.shard_model(model, mesh)
    words = {} if prompts is None or args.grader == "offline" else {"template": prompts.grade}  # the original's
    if words and args.instruct_model and args.grader == "llm":  # its instruct judge string (ChatML written out)
        words = {"template": prompts.grade_instruct, "chat": False}
    if args.grader == "llm":
        judge = seal_jax.load_pretrained(args.judge_model, dtype=args.dtype) if args.judge_model else model
        grader = make_grader("llm", model=judge, tokenizer=Tokenizer.from_dir(args.judge_model) if
                             args.judge_model else tokenizer, **words)
    elif args.grader == "openai":
        grader = make_grader("openai", base_url=args.openai_base_url, model=args.openai_model, **words)
        grader.check()  # an unreachable endpoint stops the run here, not after grading everything False
    else:
        grader = make_grader("offline")
    ttt = TTTConfig(lora=LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                                    targets=tuple(args.lora_targets.split(","))),
                    learning_rate=args.lr, epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule,
                    warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
                    weight_decay=args.weight_decay, loss_mode=args.loss_mode, max_length=args.max_length,
                    split_newlines=args.split_newlines, answer_max_tokens=args.answer_max_tokens,
                    engine=args.engine, slots=args.slots, tokens_per_step=args.tokens_per_step,
                    adapters_per_batch=args.adapters_per_batch, pack=args.pack, prompt_format=fmt)
    run.event("start", command=args.command, devices=jax.device_count(), processes=jax.process_count())
    grade = grader.grade
    if words:  # the original's grading prompt holds "Topic: {title}" before each question
        import functools
        grade = functools.partial(grader.grade)
        grade.topic_questions = True
    return Context(args, run, model, tokenizer, grade, ttt, mesh, prompts)


def is_main() -> bool:
    import jax
    return jax.process_index() == 0


# ------------------------------------------------------------------------------------------------ stages
def passages_for(args, data_path: str | None, self_edits_path: str | None, n: int, start: int = 0):
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
    from seal_jax.knowledge.data import load_passages

    if os.path.exists(path):
        return load_passages(path)
    model = model or ctx.model
    a = ctx.args
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
              unusable: dict[str, str] | None = None) -> list[dict]:
    """Every job's self-edit evaluation; finished jobs (by key) are read back, the rest streamed through the engine
    and appended as they finish; `unusable` jobs (key -> reason) are recorded as failed samples without training."""
    from seal_jax.knowledge.ttt import evaluate_stream, failed_record
    unusable = unusable or {}

    def work(todo):
        bad = [j for j in todo if j.key in unusable]
        if bad:
            yield [failed_record(j, passages[j.passage_index], ctx.args.seed, unusable[j.key]) for j in bad]
        good = [j for j in todo if j.key not in unusable]
        if good:
            yield from evaluate_stream(model or ctx.model, ctx.tokenizer, passages, good, ctx.ttt, ctx.grade,
                                       seed=ctx.args.seed, mesh=ctx.mesh)

    def on_done(recs, seconds):
        ctx.run.event("ttt_batch", jobs=len(recs), seconds=seconds, seconds_per_self_edit=seconds / max(len(recs), 1))

    done = resume_stream(path, jobs, key=lambda j: j.key, record_key="key", work=work, desc=desc,
                         no_progress=ctx.args.no_progress, write=is_main(), on_done=on_done)
    return [done[j.key] for j in jobs]


def settings(ctx: Context) -> dict:
    a = ctx.args
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
    evals = ttt_stage(ctx, passages, jobs, os.path.join(out_dir, "evals.jsonl"), model, desc=f"{label}TTT",
                      unusable=unusable)
    results = single_passage_results(passages, baseline, evals, dict(settings(ctx), n_articles=len(passages),
                                                                     k_completions=k, eval_times=reps))
    if is_main():
        write_json(os.path.join(out_dir, "results.json"), results)
    return results


def summary_row(name: str, results: dict, which: str) -> dict:
    o = results["overall"]
    return {"name": name, "accuracy": o[f"{which}_mean_accuracy"], "ci95": o[f"{which}_ci95"],
            "n": o["n_articles"]}


def write_summary(ctx: Context, title: str, rows: list[dict], extra: str = "") -> str:
    from seal_jax.knowledge.report import markdown_table
    return ctx.run.write_summary(f"# {title}\n\n{markdown_table(rows)}\n{extra}", write=is_main())


# ------------------------------------------------------------------------------------------------ commands
def cmd_eval(ctx: Context) -> None:
    a = ctx.args
    passages = passages_for(a, a.data, a.self_edits, a.n_passages, a.start)
    results = evaluate(ctx, passages, ctx.run.path, a.k, a.eval_times)
    name = "passage only" if a.k == 0 else ("self-edits from " + (os.path.basename(a.self_edits) if a.self_edits
                                                                  else "the model"))
    write_summary(ctx, "Knowledge incorporation: single passage",
                  [summary_row("base model (no TTT)", results, "baseline"),
                   summary_row(f"TTT on {name}", results, "adapter")])


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


def cmd_rest_em(ctx: Context) -> None:
    from seal_jax import seal, sft as sft_lib
    from seal_jax.checkpoints.state import load_policy, save_policy
    from seal_jax.knowledge.data import load_passages
    from seal_jax.lora import LoraConfig
    a = ctx.args
    per_round = round_passages(a.train_data, a.rounds, a.n_train_passages, a.regenerate)
    eval_passages = passages_for(a, a.eval_data, None, a.n_eval_passages) if a.eval_data else []
    policies = [ctx.model]
    rows = []
    for r in range(a.rounds + 1):
        policy = policies[r]
        if eval_passages:
            res = evaluate(ctx, [dataclasses.replace(p, completions=()) for p in eval_passages],
                           ctx.run.dir(f"eval_policy_{r}"), a.eval_k, a.eval_times, policy,
                           label=f"policy {r} eval ")
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
                                                    targets=tuple(a.sft_targets.split(","))),
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


def cmd_cpt(ctx: Context) -> None:
    import numpy as np
    from seal_jax import inner_loop as il
    from seal_jax.knowledge.report import ci95
    from seal_jax.knowledge.sequences import cpt_eval_questions, cpt_train_sequences
    from seal_jax.knowledge.ttt import answer_questions, grade_passage, training_examples
    from seal_jax.lora import init_lora, stack_adapters
    import jax
    a = ctx.args
    passages = passages_for(a, a.data, a.self_edits, a.n_passages)
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
    if is_main():
        write_json(ctx.run.file("results.json"), {"overall": overall, **settings(ctx), "per_passage": cpt["per_passage"]})
    rows = [{"name": "base model", "accuracy": overall["baseline_accuracy"], "ci95": ci95(base_c),
             "n": len(passages)},
            {"name": f"CPT on {len(passages)} passages ({'full FT' if a.full_finetune else 'LoRA'})",
             "accuracy": overall["adapter_accuracy"], "ci95": ci95(adapt_c), "n": len(passages)}]
    write_summary(ctx, "Knowledge incorporation: continued pretraining (micro accuracy)", rows)


def cmd_continual(ctx: Context) -> None:
    import numpy as np
    from seal_jax.checkpoints.state import StateCheckpointer
    from seal_jax.knowledge.data import load_passages
    from seal_jax.knowledge.ttt import Job, answer_questions, grade_passage
    from seal_jax.lora import Lora, init_lora, merge
    import jax
    a = ctx.args
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
    if is_main():
        write_json(ctx.run.file("results.json"), {"mean_over_sequences": mean.tolist(),
                                                   "std_over_sequences": std.tolist(), "n_sequences": S,
                                                   "n_datapoints": n, "dataset": a.data, **settings(ctx)})
        _heatmap(mean, ctx.run.file("forgetting.png"))
    lines = ["| after edit | " + " | ".join(f"p{j}" for j in range(n)) + " |", "|---" * (n + 1) + "|"]
    for i, row in enumerate(mean):
        cells = [f"{100 * v:.1f}" if (i == 0 or j < i) else "" for j, v in enumerate(row)]
        lines.append(f"| {'none' if i == 0 else i} | " + " | ".join(cells) + " |")
    text = "# Continual self-edits: accuracy on passage j after i edits\n\n" + "\n".join(lines) + "\n"
    if is_main():
        open(ctx.run.file("summary.md"), "w").write(text)
    print(text)


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
    seed = job.seed(ctx.args.seed)
    spec = il.TrainSpec(learning_rate=ctx.ttt.learning_rate, epochs=ctx.ttt.epochs, batch_size=ctx.ttt.batch_size,
                        max_grad_norm=ctx.ttt.max_grad_norm, seed=seed)
    plan = il.build_plan([ex], [spec], loss_mode=ctx.ttt.loss_mode, pad_id=ctx.tokenizer.pad_token_id or 0,
                         max_length=ctx.ttt.max_length, compat_length=ctx.ttt.max_length)
    state = il.train_adapters(model, stack_adapters([init_lora(model.config, ctx.ttt.lora,
                                                               jax.random.PRNGKey(seed))]), plan)
    lora = state.lora.adapter(0)
    answers = answer_questions(model, ctx.tokenizer, chosen[:k + 1], ctx.ttt, lora=lora)
    return lora, [float(np.mean(grade_passage(ctx.grade, q, ans))) for q, ans in zip(chosen[:k + 1], answers)]


def _heatmap(matrix, path: str) -> None:
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


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = load_context(args)
    {"eval": cmd_eval, "rest-em": cmd_rest_em, "cpt": cmd_cpt, "continual": cmd_continual}[args.command](ctx)
    ctx.run.event("done", command=args.command)
    if args.distributed:
        from seal_jax.distributed import barrier
        barrier("knowledge_incorporation_done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
