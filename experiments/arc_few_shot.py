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

Configuration: every flag is a field of `seal_jax.arc.experiment.ArcConfig` (the parser is generated from it by
`seal_jax.cli`), and `seal_jax.arc.experiment.run(ArcConfig(...))` runs the same experiment from Python.
"""

from __future__ import annotations

import sys

from seal_jax.arc.experiment import ORIGINAL, ArcConfig, check
from seal_jax.cli import parse_config
from seal_jax.runs import cli


def parse_args(argv=None) -> ArcConfig:
    """The experiment's config (`seal_jax.arc.experiment.ArcConfig`, whose fields are the flags). `--fidelity
    original` makes the original's behaviours (`ORIGINAL`) the defaults; explicit flags still win."""
    return parse_config("experiments.arc_few_shot", __doc__, argv, ArcConfig, check, {"original": ORIGINAL})


@cli
def main(argv=None) -> int:
    from seal_jax.arc.experiment import run
    return 3 if run(parse_args(argv)) is None else 0  # 3: stopped early by --stop-after-units


if __name__ == "__main__":
    sys.exit(main())
