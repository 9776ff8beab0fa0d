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

Configuration: every flag is a field of the command's config in `seal_jax/knowledge/experiment.py` (`EvalConfig`,
`RestEMConfig`, `CPTConfig`, `ContinualConfig`; the parser is generated from them by `seal_jax.cli`), and
`seal_jax.knowledge.experiment.run(config)` runs the same command from Python.
"""

from __future__ import annotations

import sys

from seal_jax.cli import parse_config
from seal_jax.knowledge.experiment import COMMANDS, ORIGINAL, check
from seal_jax.runs import cli


def parse_args(argv=None):
    """The command's config (`seal_jax.knowledge.experiment`: one dataclass per command, whose fields are the flags).
    `--fidelity original` makes the original's behaviours (`ORIGINAL`) the defaults; explicit flags still win."""
    return parse_config("experiments.knowledge_incorporation", __doc__, argv,
                        {name: cls for name, (cls, _) in COMMANDS.items()}, check, {"original": ORIGINAL})


@cli
def main(argv=None) -> int:
    from seal_jax.knowledge.experiment import run
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
