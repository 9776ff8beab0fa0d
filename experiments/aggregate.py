"""Aggregate continual-self-edit runs: the original's `average_results.py` table, plus the statistics it lacks.

    python -m experiments.aggregate runs/continual_0 runs/continual_1 runs/continual_2 --out overall_results.json

Each run directory holds the `results.json` of `python -m experiments.knowledge_incorporation continual`
(`mean_over_sequences` and `std_over_sequences`: the forgetting matrix's mean and standard deviation over the run's
`n_sequences` sequences). As the original's `average_results.py`:

    mean_over_sequences   the plain average of the runs' mean matrices
    std_over_sequences    the plain average of the runs' std matrices (what the original reports; not a std of
                          anything: its pooled-std function was never called)
    n_sequences           the total number of sequences

and beside them, over all N sequences of all runs:

    pooled_mean_over_sequences   the mean weighted by each run's sequences
    pooled_std_over_sequences    the sample standard deviation of the N sequences' matrices, recovered exactly from
                                 each run's mean, population std and count
    ci95_over_sequences          1.96 x pooled std / sqrt(N): the half-width of a 95% interval of the mean

The forgetting table (accuracy on passage j after i edits, the pooled mean with its CI) is printed as Markdown.
Bad input (a missing directory, a run that is not a continual run, runs of different shapes, one run named twice,
by any spelling of its path) is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from seal_jax.runs import ArgumentParser, cli, write_json

PROG = "experiments.aggregate"


def _load(run: str) -> dict:
    path = os.path.join(run, "results.json")
    try:
        with open(path) as f:
            r = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {path} does not exist (is {run} a finished continual run?)") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e})") from None
    if not isinstance(r, dict) or not all(k in r for k in ("mean_over_sequences", "std_over_sequences",
                                                           "n_sequences")):
        raise SystemExit(f"error: {path} is not a continual run's results (no mean_over_sequences, "
                         f"std_over_sequences, n_sequences)")
    return r


def aggregate(results: list[dict]) -> dict:
    """The original's average over runs and the pooled statistics over all their sequences (module docstring)."""
    means = [np.asarray(r["mean_over_sequences"], np.float64) for r in results]
    stds = [np.asarray(r["std_over_sequences"], np.float64) for r in results]
    counts = np.asarray([int(r["n_sequences"]) for r in results], np.float64)
    if len({m.shape for m in means + stds}) != 1:
        raise ValueError(f"the runs' matrices differ in shape: {sorted({m.shape for m in means + stds})}")
    if (counts < 1).any():
        raise ValueError(f"every run needs n_sequences >= 1, got {counts.astype(int).tolist()}")
    N = counts.sum()
    w = counts[:, None, None] / N
    pooled = (w * np.stack(means)).sum(0)
    # sum of squared deviations of all N sequences: each run's n (std^2 + (mean - pooled)^2), stds being population
    ss = sum(n * (s ** 2 + (m - pooled) ** 2) for n, m, s in zip(counts, means, stds))
    sample_std = np.sqrt(ss / (N - 1)) if N > 1 else np.zeros_like(pooled)
    return {"mean_over_sequences": np.mean(means, 0).tolist(), "std_over_sequences": np.mean(stds, 0).tolist(),
            "n_sequences": int(N), "pooled_mean_over_sequences": pooled.tolist(),
            "pooled_std_over_sequences": sample_std.tolist(),
            "ci95_over_sequences": (1.96 * sample_std / math.sqrt(N)).tolist() if N > 1 else None,
            "n_runs": len(results)}


def table(agg: dict) -> str:
    mean = np.asarray(agg["pooled_mean_over_sequences"])
    ci = None if agg["ci95_over_sequences"] is None else np.asarray(agg["ci95_over_sequences"])
    n = mean.shape[1]
    lines = ["| after edit | " + " | ".join(f"p{j}" for j in range(n)) + " |", "|---" * (n + 1) + "|"]
    for i, row in enumerate(mean):
        cells = [(f"{100 * v:.1f}" + ("" if ci is None else f" ± {100 * ci[i, j]:.1f}"))
                 if (i == 0 or j < i) else "" for j, v in enumerate(row)]
        lines.append(f"| {'none' if i == 0 else i} | " + " | ".join(cells) + " |")
    return (f"# Continual self-edits over {agg['n_runs']} runs ({agg['n_sequences']} sequences): accuracy % on "
            f"passage j after i edits, ± 95% CI\n\n" + "\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="continual run directories (each with results.json)")
    ap.add_argument("--out", default=None, help="write the aggregate here (JSON; default: print only)")
    return ap.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    seen: dict[str, str] = {}
    for r in args.runs:  # one run counted twice would weigh its sequences double
        real = os.path.realpath(r)
        if real in seen:
            raise SystemExit(f"error: {r} names the run {seen[real]} again (the same directory {real}); give each "
                             f"run once")
        seen[real] = r
    agg = aggregate([_load(r) for r in args.runs])
    agg["runs"] = [os.path.abspath(r) for r in args.runs]
    if args.out:
        write_json(args.out, agg)
    print(table(agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
