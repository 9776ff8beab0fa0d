"""Knowledge incorporation as a `seal_jax.seal.Task`: an input is a passage, a self-edit is the policy's
implications of it, and the reward is the accuracy on the passage's questions (without the passage in context) of
the model after test-time training on the self-edit, against the untrained model's accuracy (the baseline).

    task = KnowledgeTask(tokenizer, passages, TTTConfig(...), grade)
    policy, result = seal.rest_em_round(policy, task, seal.RoundConfig(k=5, ...), seed=0)

`seal_jax/knowledge/experiment.py` (the `experiments.knowledge_incorporation` command) drives the same pieces
(`ttt.evaluate_stream`, `seal.select`, `seal.m_step`) through resumable run directories.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from seal_jax import seal
from seal_jax.knowledge.data import Passage
from seal_jax.knowledge.ttt import GradeFn, Job, TTTConfig, answer_questions, evaluate_stream, grade_passage

__all__ = ["KnowledgeTask"]


@dataclasses.dataclass
class KnowledgeTask:
    tokenizer: Any
    passages: Sequence[Passage]
    cfg: TTTConfig
    grade: GradeFn
    variant: str = "implications"  # the self-edit prompt (seal_jax.knowledge.prompts.PROMPT_VARIANTS)
    reps: int = 1  # TTT repetitions per self-edit (the reward is their mean accuracy)

    def self_edit_prompts(self) -> list[list[int]]:
        fmt = self.cfg.prompt_format
        return [fmt.encode(self.tokenizer, fmt.self_edit_prompt(p, self.variant, self.tokenizer))
                for p in self.passages]

    def evaluate(self, policy, edits: Sequence[seal.SelfEdit], seed: int) -> list[seal.Outcome]:
        answers = answer_questions(policy, self.tokenizer, self.passages, self.cfg)
        baseline = [float(np.mean(grade_passage(self.grade, p, a))) if p.questions else 0.0
                    for p, a in zip(self.passages, answers)]
        jobs = [Job(e.item, e.sample, r, e.text) for e in edits if e.text for r in range(self.reps)]
        acc: dict[tuple[int, int], list[tuple[float, bool]]] = {}
        for batch in evaluate_stream(policy, self.tokenizer, self.passages, jobs, self.cfg, self.grade, seed=seed):
            for rec in batch:
                acc.setdefault((rec["passage_index"], rec["completion_index"]), []).append(
                    (rec["accuracy"], rec["failed"]))
        out = []
        for e in edits:
            reps = acc.get((e.item, e.sample), [])
            if not e.text:
                out.append(seal.Outcome(e, 0.0, baseline[e.item], failed=True, reason="the self-edit is empty"))
            elif all(failed for _, failed in reps):
                out.append(seal.Outcome(e, 0.0, baseline[e.item], failed=True, reason="TTT diverged"))
            else:
                out.append(seal.Outcome(e, float(np.mean([a for a, _ in reps])), baseline[e.item]))
        return out
