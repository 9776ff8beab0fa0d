"""Batched self-edit evaluation for knowledge incorporation: many (passage, self-edit, repetition) jobs trained as
one vmapped LoRA batch over the shared base, then answered in one multi-adapter generation call.

One job = the original's TTT-server request: build the training sequences from the self-edit, fine-tune a fresh LoRA
on them, answer the passage's questions (without the passage) and grade the answers. Baseline answers are computed
once per passage (`answer_questions`), not per job. A job whose adapter goes non-finite is a failed sample: every
answer counts as wrong (reward 0) and the reason is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Sequence

import jax
import numpy as np

from seal_jax import generation, inner_loop as il
from seal_jax.knowledge.data import Passage
from seal_jax.knowledge.prompts import format_answer_prompts
from seal_jax.knowledge.sequences import build_train_sequences
from seal_jax.lora import LoraConfig, init_lora
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
    adapters_per_batch: int = 16  # K: jobs trained together (the compiled shape; short batches are padded)
    pack: bool = False


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


def _answer_prompt_ids(tokenizer, passage: Passage) -> list[list[int]]:
    return [tokenizer.encode(p) for p in format_answer_prompts(passage)]


def _stop_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _decode_all(tokenizer, outputs: Sequence[Sequence[int]]) -> list[str]:
    return [tokenizer.decode(o).strip() for o in outputs]


def grade_passage(grade: GradeFn, passage: Passage, answers: Sequence[str]) -> list[bool]:
    qs = [q.question for q in passage.questions]
    golds = [q.answer for q in passage.questions]
    return list(grade(qs, golds, list(answers)))


def answer_questions(model: Model, tokenizer, passages: Sequence[Passage], cfg: TTTConfig, lora=None,
                     max_rows: int = 256) -> list[list[str]]:
    """Greedy answers to every passage's questions, per passage: of the base model (the baseline, computed once
    per passage) or of the model with one adapter (`lora`)."""
    prompts, owners = [], []
    for i, p in enumerate(passages):
        for ids in _answer_prompt_ids(tokenizer, p):
            prompts.append(ids)
            owners.append(i)
    outs: list[list[int]] = []
    for s in range(0, len(prompts), max_rows):
        outs += generation.generate(model, prompts[s:s + max_rows], max_new_tokens=cfg.answer_max_tokens,
                                    stop_token_ids=_stop_ids(tokenizer), lora=lora)
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


def evaluate_jobs(model: Model, tokenizer, passages: Sequence[Passage], jobs: Sequence[Job], cfg: TTTConfig,
                  grade: GradeFn, seed: int = 0, mesh=None, train_sequences: Sequence[Sequence[str]] | None = None
                  ) -> list[dict]:
    """Train one adapter per job (up to cfg.adapters_per_batch at once) and answer + grade its passage's questions.

    train_sequences: per job, the training texts (default: built from the job's self-edit and passage).
    Returns one record per job (same order): answers, verdicts, accuracy, training summary.
    """
    K = cfg.adapters_per_batch
    records: list[dict] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(jobs), K):
        batch = list(jobs[start:start + K])
        seqs = ([list(s) for s in train_sequences[start:start + K]] if train_sequences is not None else
                [build_train_sequences(j.completion, passages[j.passage_index], split_newlines=cfg.split_newlines)
                 for j in batch])
        datasets = [training_examples(tokenizer, s, cfg.loss_mode) for s in seqs]
        seeds = [j.seed(seed) for j in batch]
        specs = [il.TrainSpec(learning_rate=cfg.learning_rate, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                              epochs=cfg.epochs, batch_size=cfg.batch_size, max_grad_norm=cfg.max_grad_norm,
                              weight_decay=cfg.weight_decay, seed=s) for s in seeds]
        plan = il.build_plan(datasets, specs, loss_mode=cfg.loss_mode, pad_id=pad_id, max_length=cfg.max_length,
                             compat_length=cfg.max_length, pack=cfg.pack, num_adapters=K)
        loras = [init_lora(model.config, cfg.lora, jax.random.PRNGKey(s)) for s in seeds]
        while len(loras) < K:  # padding adapters: zero steps, never answered
            loras.append(loras[0])
        from seal_jax.lora import stack_adapters
        lora = stack_adapters(loras)
        if mesh is not None:
            from seal_jax.distributed import shard_lora
            lora = shard_lora(lora, mesh)
        state = il.train_adapters(model, lora, plan, mesh=mesh)
        from seal_jax.distributed import gather
        steps, failed, losses = gather((state.step, state.failed, state.losses))

        groups = [_answer_prompt_ids(tokenizer, passages[j.passage_index]) for j in batch]
        groups += [[] for _ in range(K - len(batch))]
        outs = generation.generate_grouped(model, state.lora, groups, max_new_tokens=cfg.answer_max_tokens,
                                           stop_token_ids=_stop_ids(tokenizer), mesh=mesh)
        for k, job in enumerate(batch):
            passage = passages[job.passage_index]
            answers = _decode_all(tokenizer, outs[k])
            ok = not bool(failed[k])
            correct = grade_passage(grade, passage, answers) if ok else [False] * len(answers)
            taken = losses[k][:int(steps[k])]
            records.append({
                "key": job.key, "passage_index": job.passage_index, "completion_index": job.completion_index,
                "rep": job.rep, "seed": seeds[k], "n_sequences": len(seqs[k]),
                "train_tokens": int(plan.real_tokens[k]), "steps": int(steps[k]),
                "first_loss": float(taken[0]) if len(taken) else None,
                "final_loss": float(taken[-1]) if len(taken) else None,
                "failed": not ok, "failure": None if ok else "non-finite loss or gradient during training",
                "answers": answers, "correct": correct,
                "accuracy": float(np.mean(correct)) if correct else 0.0,
            })
    return records
