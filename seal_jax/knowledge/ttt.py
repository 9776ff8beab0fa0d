"""Batched self-edit evaluation for knowledge incorporation: many (passage, self-edit, repetition) jobs fine-tuned as
one stream over the shared base (`seal_jax.engine`: ragged packing, adapter slots refilled as jobs finish), finished
adapters answering their passages' questions together in multi-adapter generation calls.

One job = the original's TTT-server request: build the training sequences from the self-edit, fine-tune a fresh LoRA
on them, answer the passage's questions (without the passage) and grade the answers. Baseline answers are computed
once per passage (`answer_questions`), not per job. A job whose adapter goes non-finite is a failed sample: every
answer counts as wrong (reward 0) and the reason is recorded. With a mesh the engine is sharded (jobs balanced over
the "adapter" axis, `TTTConfig.slots` per shard) and the finished adapters answer with their rows spread over it.
`TTTConfig.engine="padded"` runs the previous layout (K jobs per vmapped batch, rows padded to the batch's longest
sequence; `seal_jax.inner_loop`), kept as the comparison point.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from seal_jax import engine as eng, seal
from seal_jax.buckets import batch_bucket
from seal_jax import generation, inner_loop as il
from seal_jax.knowledge.data import Passage
from seal_jax.knowledge.prompts import PromptFormat, topic_question
from seal_jax.knowledge.sequences import build_train_sequences
from seal_jax.lora import LoraConfig, init_lora, stack_adapters
from seal_jax.models.model import Model

GradeFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[bool]]  # (questions, golds, predictions)


@dataclasses.dataclass(frozen=True)
class TTTConfig:
    """The inner loop of one self-edit evaluation. Defaults = the original's (TTT_server + query_server.sh)."""

    lora: LoraConfig = LoraConfig(rank=32, alpha=64.0, targets=("q", "v"))
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    schedule: str = "linear"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    loss_mode: str = "compat_padding"  # the original: eos padding to max_length, pads in the loss; "all" = clean
    max_length: int = 2048
    split_newlines: bool = True
    answer_max_tokens: int = 64
    engine: str = "ragged"  # "ragged" (seal_jax.engine) | "padded" (seal_jax.inner_loop, the comparison point)
    slots: int = 64  # ragged: the most adapters resident at once per adapter shard (engine.stream_slots)
    tokens_per_step: int = 4096  # ragged: the largest packed stream of one optimiser step
    answer_rows: int = 128  # ragged: finished adapters answer once this many questions (or `slots` adapters) wait
    adapters_per_batch: int = 16  # padded: K jobs trained together (the compiled shape; short batches are padded)
    pack: bool = False  # padded: pack sequences into rows
    prompt_format: PromptFormat = PromptFormat()  # base-model text (the original's) or an instruct model's chats

    def __post_init__(self):
        if self.engine not in ("ragged", "padded"):
            raise ValueError(f"unknown engine {self.engine!r} (ragged or padded)")
        for name in ("slots", "tokens_per_step", "answer_rows", "adapters_per_batch", "epochs", "batch_size",
                     "answer_max_tokens", "max_length"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"TTTConfig.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Job:
    """One self-edit evaluation: passage `passage_index`, self-edit number `completion_index`, repetition `rep`."""

    passage_index: int
    completion_index: int
    rep: int
    completion: str

    @property
    def key(self) -> str:
        return f"{self.passage_index}/{self.completion_index}/{self.rep}"

    def seed(self, base_seed: int) -> int:
        """A per-job seed (data order and LoRA init) that does not depend on which other jobs share its batch."""
        h = hashlib.sha256(f"{base_seed}:{self.key}".encode()).digest()
        return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _answer_prompt_ids(tokenizer, passage: Passage, fmt: PromptFormat = PromptFormat()) -> list[list[int]]:
    return [fmt.encode(tokenizer, p) for p in fmt.answer_prompts(passage, tokenizer)]


def _decode_all(tokenizer, outputs: Sequence[Sequence[int]]) -> list[str]:
    return [tokenizer.decode(o).strip() for o in outputs]


def grade_passage(grade: GradeFn, passage: Passage, answers: Sequence[str]) -> list[bool]:
    """Grade one passage's answers. A grade function with a true ``topic_questions`` attribute (the original's
    grading prompt, `--prompts`) gets each question as the original's graders did: ``Topic: {title}\n{question}``."""
    if getattr(grade, "topic_questions", False):
        qs = [topic_question(passage.title, q.question) for q in passage.questions]
    else:
        qs = [q.question for q in passage.questions]
    golds = [q.answer for q in passage.questions]
    return list(grade(qs, golds, list(answers)))


def answer_questions(model: Model, tokenizer, passages: Sequence[Passage], cfg: TTTConfig, lora=None,
                     max_rows: int = 256) -> list[list[str]]:
    """Greedy answers to every passage's questions, per passage: of the base model (the baseline, computed once
    per passage) or of the model with one adapter (`lora`)."""
    prompts, owners = [], []
    for i, p in enumerate(passages):
        for ids in _answer_prompt_ids(tokenizer, p, cfg.prompt_format):
            prompts.append(ids)
            owners.append(i)
    outs: list[list[int]] = []
    for s in range(0, len(prompts), max_rows):
        outs += generation.generate(model, prompts[s:s + max_rows], max_new_tokens=cfg.answer_max_tokens,
                                    stop_token_ids=cfg.prompt_format.stop_ids(tokenizer), lora=lora)
    texts = _decode_all(tokenizer, outs)
    answers: list[list[str]] = [[] for _ in passages]
    for i, t in zip(owners, texts):
        answers[i].append(t)
    return answers


def training_examples(tokenizer, sequences: Sequence[str], loss_mode: str) -> list[il.Example]:
    """Each sequence tokenised on its own (as the original); the clean mode adds one trailing eos, the compat mode
    gets its eos padding from the plan."""
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer.batch_encode(sequences):
        if loss_mode != "compat_padding" and eos is not None:
            ids = ids + [eos]
        out.append(il.Example(tuple(ids)))
    return out


def _spec(cfg: TTTConfig, seed: int) -> il.TrainSpec:
    return il.TrainSpec(learning_rate=cfg.learning_rate, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                        epochs=cfg.epochs, batch_size=cfg.batch_size, max_grad_norm=cfg.max_grad_norm,
                        weight_decay=cfg.weight_decay, seed=seed)


def failed_record(job: Job, passage: Passage, seed: int, reason: str) -> dict:
    """A self-edit that cannot be trained (e.g. empty): a failed sample with reward 0 and its reason."""
    n = len(passage.questions)
    return _record(job, job.seed(seed), 0, 0, 0, [], True, reason, [""] * n, [False] * n)


def _record(job: Job, seed: int, n_sequences: int, train_tokens: int, steps: int, losses: Sequence[float],
            failed: bool, failure: str | None, answers: list[str], correct: list[bool]) -> dict:
    return {"key": job.key, "passage_index": job.passage_index, "completion_index": job.completion_index,
            "rep": job.rep, "seed": seed, "n_sequences": n_sequences, "train_tokens": int(train_tokens),
            "steps": int(steps), "first_loss": float(losses[0]) if len(losses) else None,
            "final_loss": float(losses[-1]) if len(losses) else None, "failed": failed,
            "failure": failure, "answers": answers, "correct": correct,
            "accuracy": float(np.mean(correct)) if correct else 0.0}


def evaluate_stream(model: Model, tokenizer, passages: Sequence[Passage], jobs: Sequence[Job], cfg: TTTConfig,
                    grade: GradeFn, seed: int = 0, mesh=None,
                    train_sequences: Sequence[Sequence[str]] | None = None, stats: dict | None = None
                    ) -> Iterator[list[dict]]:
    """Train one adapter per job and answer + grade its passage's questions; yields lists of records (one per job,
    each with the job's "key") as they are ready, in finishing order.

    train_sequences: per job, the training texts (default: built from the job's self-edit and passage).
    stats: filled with the engine's accounting (token slots, real tokens, ...) when given.
    """
    seqs = ([list(s) for s in train_sequences] if train_sequences is not None else
            [build_train_sequences(j.completion, passages[j.passage_index], split_newlines=cfg.split_newlines)
             for j in jobs])
    if cfg.engine == "padded":
        for start in range(0, len(jobs), cfg.adapters_per_batch):
            yield _evaluate_padded(model, tokenizer, passages, list(jobs[start:start + cfg.adapters_per_batch]),
                                   seqs[start:start + cfg.adapters_per_batch], cfg, grade, seed, mesh, stats)
        return
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    engine = eng.Engine(model, cfg.lora, eng.EngineConfig(
        slots=cfg.slots, max_tokens_per_step=cfg.tokens_per_step, loss_mode=cfg.loss_mode,
        pad_id=pad_id, max_length=cfg.max_length, compat_length=cfg.max_length), mesh=mesh)
    work = [eng.Job(training_examples(tokenizer, s, cfg.loss_mode), _spec(cfg, j.seed(seed)), init_seed=j.seed(seed),
                    key=(j, len(s))) for j, s in zip(jobs, seqs)]

    def questions(batch: list[list[eng.Finished]]) -> int:
        return sum(len(passages[g[0].job.key[0].passage_index].questions) for g in batch)

    # enough rows for one answer call, or a whole bank's worth of adapters waiting
    yield from seal.evaluate(
        engine, work, lambda batch: _answer_finished(model, tokenizer, passages, [g[0] for g in batch], cfg, grade,
                                                     seed, mesh),
        ready=lambda batch: questions(batch) >= cfg.answer_rows or len(batch) >= cfg.slots)
    if stats is not None:
        stats.update({k: v for k, v in engine.stats.items() if k != "shapes"})


def _answer_finished(model, tokenizer, passages, finished: list[eng.Finished], cfg: TTTConfig, grade,
                     seed: int, mesh=None) -> list[dict]:
    """Answer every finished job's questions with its own adapter in one multi-adapter generate call per
    `answer_rows` rows; failed adapters are not asked (their answers count as wrong)."""
    usable = [f for f in finished if not f.failed]
    prompts, owners = [], []
    for a, f in enumerate(usable):
        for ids in _answer_prompt_ids(tokenizer, passages[f.job.key[0].passage_index], cfg.prompt_format):
            prompts.append(ids)
            owners.append(a)
    texts: list[str] = []
    if usable:
        # pad the adapter batch to a power of two, so the number of finished jobs rarely changes the program
        bank = [f.lora for f in usable]
        bank += [bank[0]] * (batch_bucket(len(bank)) - len(bank))
        outs = generation.generate(model, prompts, max_new_tokens=cfg.answer_max_tokens,
                                   stop_token_ids=cfg.prompt_format.stop_ids(tokenizer), lora=stack_adapters(bank),
                                   adapter_ids=owners, mesh=mesh)
        texts = _decode_all(tokenizer, outs)
    answers: dict[int, list[str]] = {a: [] for a in range(len(usable))}
    for a, t in zip(owners, texts):
        answers[a].append(t)
    records = []
    by_id = {id(f): a for a, f in enumerate(usable)}
    for f in finished:
        job, n_seq = f.job.key
        passage = passages[job.passage_index]
        if f.failed:
            ans, correct = [""] * len(passage.questions), [False] * len(passage.questions)
        else:
            ans = answers[by_id[id(f)]]
            correct = grade_passage(grade, passage, ans)
        records.append(_record(job, job.seed(seed), n_seq, f.real_tokens, f.steps, f.losses, f.failed, f.failure,
                               ans, correct))
    return records


def _evaluate_padded(model, tokenizer, passages, batch: list[Job], seqs, cfg: TTTConfig, grade, seed: int, mesh,
                     stats: dict | None) -> list[dict]:
    """One batch of up to K jobs on the padded layout (vmapped, rows padded to the batch's longest sequence)."""
    K = cfg.adapters_per_batch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    datasets = [training_examples(tokenizer, s, cfg.loss_mode) for s in seqs]
    seeds = [j.seed(seed) for j in batch]
    plan = il.build_plan(datasets, [_spec(cfg, s) for s in seeds], loss_mode=cfg.loss_mode, pad_id=pad_id,
                         max_length=cfg.max_length, compat_length=cfg.max_length, pack=cfg.pack, num_adapters=K)
    loras = [init_lora(model.config, cfg.lora, jax.random.PRNGKey(s)) for s in seeds]
    loras += [loras[0]] * (K - len(loras))  # padding adapters: zero steps, never answered
    lora = stack_adapters(loras)
    if mesh is not None:
        from seal_jax.distributed import shard_lora
        lora = shard_lora(lora, mesh)
    state = il.train_adapters(model, lora, plan, mesh=mesh)
    from seal_jax.distributed import gather
    steps, failed, losses = gather((state.step, state.failed, state.losses))
    if stats is not None:
        stats["token_slots"] = stats.get("token_slots", 0) + plan.token_slots()
        stats["real_tokens"] = stats.get("real_tokens", 0) + int(plan.real_tokens.sum())

    groups = [_answer_prompt_ids(tokenizer, passages[j.passage_index], cfg.prompt_format) for j in batch]
    groups += [[] for _ in range(K - len(batch))]
    outs = generation.generate_grouped(model, state.lora, groups, max_new_tokens=cfg.answer_max_tokens,
                                       stop_token_ids=cfg.prompt_format.stop_ids(tokenizer), mesh=mesh)
    records = []
    for k, job in enumerate(batch):
        passage = passages[job.passage_index]
        answers = _decode_all(tokenizer, outs[k])
        ok = not bool(failed[k])
        correct = grade_passage(grade, passage, answers) if ok else [False] * len(answers)
        records.append(_record(job, seeds[k], len(seqs[k]), plan.real_tokens[k], steps[k],
                               losses[k][:int(steps[k])], not ok,
                               None if ok else "non-finite loss or gradient during training", answers, correct))
    return records


def evaluate_jobs(model: Model, tokenizer, passages: Sequence[Passage], jobs: Sequence[Job], cfg: TTTConfig,
                  grade: GradeFn, seed: int = 0, mesh=None, train_sequences: Sequence[Sequence[str]] | None = None
                  ) -> list[dict]:
    """`evaluate_stream` collected: one record per job, in the order of `jobs`."""
    by_key = {r["key"]: r for recs in evaluate_stream(model, tokenizer, passages, jobs, cfg, grade, seed, mesh,
                                                      train_sequences) for r in recs}
    return [by_key[j.key] for j in jobs]
