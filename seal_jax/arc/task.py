"""Few-shot ARC as a `seal_jax.seal.Task`: an input is an ARC task, a self-edit is the policy's reply configuring
test-time training (augmentation families, loss, learning rate, epochs), and the reward is 1 when the adapter trained
that way solves the task's test inputs with the two voted attempts, else 0 (baseline 0, so "improved" = solved). A
reply that does not parse is a failed outcome with the parser's reason. The M-step clones the parsed configuration
as canonical JSON (the clean behaviour-cloning target).

    task = FewShotTask(tokenizer, tasks, TTTOptions(...), InferenceOptions(...))
    policy, result = seal.rest_em_round(policy, task, seal.RoundConfig(k=15, rule=seal.SelectRule("all", True), ...),
                                        seed=0)

`seal_jax/arc/experiment.py` (the `experiments.arc_few_shot` command) drives the same pieces (`ttt.evaluate_tasks`,
`seal.select`, `seal.m_step`) through resumable run directories, with the fidelity switches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from seal_jax import seal
from seal_jax.arc.data import ArcTask
from seal_jax.arc.self_edit import SelfEditError, parse_self_edit, parse_self_edit_original, self_edit_messages
from seal_jax.arc.ttt import TTTOptions, evaluate_tasks

__all__ = ["FewShotTask"]


@dataclasses.dataclass
class FewShotTask:
    tokenizer: Any
    tasks: Sequence[ArcTask]
    opts: TTTOptions = TTTOptions()
    inference_opts: Any = None  # seal_jax.arc.inference.InferenceOptions (None: the defaults)
    sampling: str = "clean"  # how replies are read: "clean" (lenient) or "original" (strict json.loads)
    mesh: Any = None  # the engine and inference sharded over this mesh (the policy placed on it), or one device

    def self_edit_prompts(self) -> list[list[int]]:
        return [list(self.tokenizer.apply_chat_template(self_edit_messages(t))) for t in self.tasks]

    def evaluate(self, policy, edits: Sequence[seal.SelfEdit], seed: int) -> list[seal.Outcome]:
        parse = parse_self_edit_original if self.sampling == "original" else parse_self_edit
        configs, errors = {}, {}
        for e in edits:
            try:
                configs[(e.item, e.sample)] = parse(e.text)
            except SelfEditError as err:
                errors[(e.item, e.sample)] = f"unparseable self-edit: {err}"
        order = {i: [e for e in edits if (e.item, e.sample) in configs and e.item == i]
                 for i in range(len(self.tasks))}
        work = [(self.tasks[i], [configs[(e.item, e.sample)] for e in order[i]]) for i in order if order[i]]
        opts = dataclasses.replace(self.opts, seed=seed)
        solved: dict[tuple[int, int], bool] = {}
        index = {t.task_id: i for i, t in enumerate(self.tasks)}
        for task_id, records in evaluate_tasks(policy, self.tokenizer, work, opts, self.inference_opts,
                                               mesh=self.mesh):
            for e, rec in zip(order[index[task_id]], records):
                solved[(e.item, e.sample)] = bool(rec["correct"])
        out = []
        for e in edits:
            key = (e.item, e.sample)
            if key in errors:
                out.append(seal.Outcome(e, 0.0, failed=True, reason=errors[key]))
            else:
                out.append(seal.Outcome(e, float(solved[key]), target=configs[key].to_json()))
        return out
