"""The offline grader against the previous one on the same by-question splits (one-off evidence for RESULTS.md).

    git show ccb7f05:seal_jax/knowledge/grader.py > /tmp/prev_grader.py
    git show ccb7f05:seal_jax/knowledge/offline_grader.json > /tmp/prev_params.json
    OMP_NUM_THREADS=1 python -m benchmarks.grader_comparison ../shared/data/grader/squad_gpt41_verdicts_dev.jsonl \\
        --old-module /tmp/prev_grader.py --old-params /tmp/prev_params.json

Rows: the current grader (shipped parameters: chosen by 5-fold cross-validation over the "fit" and "select"
questions and fit on both, so its "fit" and "select" columns are in-sample); the previous grader (its own features
and shipped parameters, fit on "fit" and chosen on "select"); the substring rule. Both graders never saw "report".
95% intervals: bootstrap over questions, as in --fit.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from seal_jax.knowledge import grader as G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verdicts")
    ap.add_argument("--old-module", required=True, help="the previous seal_jax/knowledge/grader.py")
    ap.add_argument("--old-params", required=True, help="the previous offline_grader.json")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("old_grader", args.old_module)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    rows = G.load_verdicts(args.verdicts)
    qs, gs, ps = [r["question"] for r in rows], [r["gold"] for r in rows], [r["prediction"] for r in rows]
    y = np.asarray([bool(r["gpt41_correct"]) for r in rows])
    part = np.asarray([G.split_of(q) for q in qs])
    keys = [G.split_key(q) for q in qs]
    graders = {
        "offline grader (shipped)": np.asarray(G.OfflineGrader().grade(qs, gs, ps)),
        "previous grader (shipped)": np.asarray(old.OfflineGrader(args.old_params).grade(qs, gs, ps)),
        "substring rule": np.asarray([G.substring_rule(g, p) for g, p in zip(gs, ps)]),
    }
    print(f"{'':30s} " + "  ".join(f"{name:>26s}" for name, _, _ in G.SPLITS))
    for label, verdicts in graders.items():
        cells = []
        for name, _, _ in G.SPLITS:
            m = part == name
            s = G.agreement_stats((verdicts == y)[m], [k for k, t in zip(keys, m) if t])
            cells.append(f"{s['agreement']:.4f} [{s['ci95_bootstrap'][0]:.4f}, {s['ci95_bootstrap'][1]:.4f}]")
        print(f"{label:30s} " + "  ".join(f"{c:>26s}" for c in cells))
    report = part == "report"
    new, prev = graders["offline grader (shipped)"] == y, graders["previous grader (shipped)"] == y
    diff = (new.astype(float) - prev.astype(float))[report]
    rkeys = np.asarray([k for k, t in zip(keys, report) if t])
    uniq, inv = np.unique(rkeys, return_inverse=True)
    per_q, count = np.bincount(inv, diff, len(uniq)), np.bincount(inv, minlength=len(uniq)).astype(float)
    draw = np.random.default_rng(0).integers(0, len(uniq), (G.BOOTSTRAP_RESAMPLES, len(uniq)))
    stats = per_q[draw].sum(1) / count[draw].sum(1)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    print(f"report, current - previous (paired, bootstrap over questions): {diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]; "
          f"rows where only the current agrees: {int((new & ~prev)[report].sum())}, only the previous: "
          f"{int((prev & ~new)[report].sum())}")


if __name__ == "__main__":
    main()
