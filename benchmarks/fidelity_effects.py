"""How much each fidelity switch changes what a run computes, measured on real data where it exists.

    python -m benchmarks.fidelity_effects --json          # about a minute on a 2-core CPU

1. `--vote original` (ARC): on random prediction sets shaped like the original's inference (12 predictions per test
   input over its six categories, drawn from 1-4 distinct candidate grids with random weights), how often the two
   attempts differ from the clean vote, and pass@2 of each when the most probable candidate is the right answer.
2. `--rank-split-newlines original` (knowledge ReST-EM): on SEAL's own round-0 training self-edits
   (`../shared/data/seal_self_edits/iter0_train.json`), how many training sequences a self-edit gives with and
   without line splitting, and how many self-edits change.
3. `--pad-loss original` (ARC): on the `arc-seal` workload (10 `seal-eval` tasks x 5 drawn configurations, real
   ARC data and the Llama-3 tokenizer, `experiments/workloads.py`), the fraction of loss tokens that are pads.

The numbers go to benchmarks/RESULTS.md ("Fidelity switches") and the README's fidelity table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys


def vote_effect(n_sets: int = 20000, seed: int = 0) -> dict:
    from seal_jax.arc.inference import vote
    rng = random.Random(seed)
    categories = ["identity", "transpose", "flip_0", "flip_1", "rotate_90", "rotate_180"] * 2
    differ, solved = 0, {"clean": 0, "original": 0}
    for _ in range(n_sets):
        pool = [tuple(tuple(rng.randrange(3) for _ in range(3)) for _ in range(3)) for _ in range(rng.randint(1, 4))]
        weights = sorted((rng.random() for _ in pool), reverse=True)  # pool[0] is the most probable
        preds = [(rng.choices(pool, weights)[0], c) for c in categories]
        got = {mode: vote(preds, mode) for mode in ("clean", "original")}
        differ += got["clean"] != got["original"]
        for mode, attempts in got.items():
            solved[mode] += pool[0] in attempts
    return {"sets": n_sets, "attempts_differ": differ / n_sets,
            "pass2_clean": solved["clean"] / n_sets, "pass2_original": solved["original"] / n_sets}


def rank_split_effect() -> dict | None:
    from experiments.workloads import shared_file
    from seal_jax.knowledge.data import load_passages
    from seal_jax.knowledge.sequences import build_train_sequences
    try:
        passages = load_passages(shared_file("data", "seal_self_edits", "iter0_train.json"))
    except (FileNotFoundError, SystemExit):
        return None
    split, whole, changed, n = [], [], 0, 0
    for p in passages:
        for c in p.completions:
            if not c.strip():
                continue
            a = build_train_sequences(c, p, split_newlines=True)
            b = build_train_sequences(c, p, split_newlines=False)
            split.append(len(a))
            whole.append(len(b))
            changed += a != b
            n += 1
    return {"self_edits": n, "mean_sequences_split": sum(split) / n, "mean_sequences_whole": sum(whole) / n,
            "self_edits_changed": changed / n}


def pad_loss_effect() -> dict:
    from experiments.workloads import arc_seal
    w = arc_seal()
    by = {}
    for job in w.jobs:
        if not job.examples:
            continue
        strategy = "output" if any(0 in e.mask() for e in job.examples) else "all"
        longest = max(len(e.tokens) for e in job.examples)
        real = sum(sum(e.mask()) for e in job.examples)
        pads = sum(longest - len(e.tokens) for e in job.examples)
        s = by.setdefault(strategy, {"jobs": 0, "real_loss_tokens": 0, "pad_loss_tokens": 0, "fractions": []})
        s["jobs"] += 1
        s["real_loss_tokens"] += real
        s["pad_loss_tokens"] += pads
        s["fractions"].append(pads / (real + pads))
    for s in by.values():
        f = sorted(s.pop("fractions"))
        s.update(pad_fraction=s["pad_loss_tokens"] / (s["real_loss_tokens"] + s["pad_loss_tokens"]),
                 pad_fraction_min=f[0], pad_fraction_max=f[-1])
    return by


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sets", type=int, default=20000, help="random prediction sets for the vote")
    args = ap.parse_args(argv)
    out = {"vote": vote_effect(args.sets), "rank_split_newlines": rank_split_effect(), "pad_loss": pad_loss_effect()}
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
