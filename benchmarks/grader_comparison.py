"""The offline grader against the previous one on the same by-question splits (one-off evidence for RESULTS.md).

    git show 952d70f:seal_jax/knowledge/grader.py > /tmp/old_grader.py
    git show 952d70f:seal_jax/knowledge/offline_grader.json > /tmp/old_params.json
    OMP_NUM_THREADS=1 python -m benchmarks.grader_comparison ../shared/data/grader/squad_gpt41_verdicts_dev.jsonl \\
        --old-module /tmp/old_grader.py --old-params /tmp/old_params.json

Rows: the current grader (shipped parameters); the previous method (its hand-written numpy trees, 500 trees of depth
3, learning rate 0.05, threshold 0) refit on the "fit" questions, so that it is measured on "select" and "report" as
the current one is; the previously shipped parameters (fit on buckets 20-99, so "select" and "report" were in their
training data: shown, not a measure); the substring rule. 95% intervals: bootstrap over questions, as in --fit.
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
    has = np.asarray([bool(p.strip()) for p in ps])
    X = np.zeros((len(rows), len(old.FEATURE_NAMES)))
    X[has] = old.feature_matrix([q for q, h in zip(qs, has) if h], [g for g, h in zip(gs, has) if h],
                                [p for p, h in zip(ps, has) if h])
    fit = (part == "fit") & has
    refit = old.fit_trees(X[fit], y[fit])  # the previous defaults: 500 trees, depth 3, learning rate 0.05
    m_refit = np.full(len(rows), -np.inf)
    m_refit[has] = old.tree_margins(refit, X[has])
    graders = {
        "offline grader (shipped)": np.asarray(G.OfflineGrader().grade(qs, gs, ps)),
        "previous method refit on fit": m_refit > 0,
        "previous shipped params": np.asarray(old.OfflineGrader(args.old_params).grade(qs, gs, ps)),
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


if __name__ == "__main__":
    main()
