"""Results in the original's schema (query_server's run JSON), with confidence intervals and a Markdown summary.

Standard deviations are sample standard deviations (n - 1), as the original's query_server computes every one of
them with `statistics.stdev`: a completion's ``adapter_std`` (over its repetitions), an article's
``adapter_std_over_completions``, and the overall ``baseline_std_of_article_means`` and
``adapter_std_of_article_means`` (0.0 below two values, as there). Each question row also carries ``gain``:
adapter_correct - baseline_correct (+1, 0 or -1, the TTT server's per-question ``gains``)."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from seal_jax.knowledge.data import Passage


def _mean(xs: Sequence[float]) -> float:
    return float(statistics.fmean(xs)) if xs else 0.0


def _std(xs: Sequence[float]) -> float:
    return float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def ci95(values: Sequence[float]) -> float | None:
    """Half-width of a normal-approximation 95% confidence interval of the mean of `values` (None below two values:
    JSON has no NaN)."""
    n = len(values)
    if n < 2:
        return None
    return 1.96 * statistics.stdev(values) / math.sqrt(n)


def single_passage_results(passages: Sequence[Passage], baseline: dict[int, dict], evals: Sequence[dict],
                           settings: dict) -> dict:
    """The original's run JSON: overall (macro over passages), articles -> completions -> questions."""
    by_passage: dict[int, dict[int, list[dict]]] = {}
    for r in evals:
        by_passage.setdefault(r["passage_index"], {}).setdefault(r["completion_index"], []).append(r)
    articles = []
    for pi in sorted(by_passage):
        p = passages[pi]
        base = baseline[pi]
        base_acc = float(sum(base["correct"]) / max(len(base["correct"]), 1))
        completions = []
        for ci in sorted(by_passage[pi]):
            reps = sorted(by_passage[pi][ci], key=lambda r: r["rep"])
            adapter = [r["accuracy"] for r in reps]
            questions = []
            for r in reps:
                for qi, q in enumerate(p.questions):
                    questions.append({"rep": r["rep"], "question": q.question, "answer": q.answer,
                                      "baseline_answer": base["answers"][qi], "adapter_answer": r["answers"][qi],
                                      "baseline_correct": base["correct"][qi], "adapter_correct": r["correct"][qi],
                                      "gain": int(r["correct"][qi]) - int(base["correct"][qi])})
            completions.append({
                "text": p.completions[ci] if ci < len(p.completions) else "",
                "stats": {"baseline_mean": base_acc, "baseline_std": 0.0, "adapter_mean": _mean(adapter),
                          "adapter_std": _std(adapter), "gain_mean": _mean(adapter) - base_acc,
                          "failed_reps": sum(r["failed"] for r in reps),
                          "n_sequences": reps[0]["n_sequences"], "train_tokens": reps[0]["train_tokens"]},
                "questions": questions,
            })
        means = [c["stats"]["adapter_mean"] for c in completions]
        articles.append({
            "title": p.title, "context": p.context, "prompt": p.prompt, "passage_index": pi,
            "stats": {"baseline_mean": base_acc, "adapter_mean": _mean(means),
                      "adapter_std_over_completions": _std(means), "gain_mean": _mean(means) - base_acc},
            "completions": completions,
        })
    base_means = [a["stats"]["baseline_mean"] for a in articles]
    adapter_means = [a["stats"]["adapter_mean"] for a in articles]
    n_q = sum(len(passages[a["passage_index"]].questions) for a in articles)
    overall = {
        "baseline_mean_accuracy": _mean(base_means), "baseline_std_of_article_means": _std(base_means),
        "adapter_mean_accuracy": _mean(adapter_means), "adapter_std_of_article_means": _std(adapter_means),
        "mean_adapter_std_over_completions": _mean([a["stats"]["adapter_std_over_completions"] for a in articles]),
        "mean_adapter_std_within_completions": _mean([c["stats"]["adapter_std"] for a in articles
                                                      for c in a["completions"]]),
        "mean_gain": _mean(adapter_means) - _mean(base_means),
        "baseline_ci95": ci95(base_means), "adapter_ci95": ci95(adapter_means),
        "baseline_micro_accuracy": (sum(sum(baseline[a["passage_index"]]["correct"]) for a in articles) / n_q
                                    if n_q else 0.0),
        "n_articles": len(articles), "n_questions": n_q,
        "failed_self_edits": sum(r["failed"] for r in evals), "n_self_edit_evaluations": len(evals),
    }
    return {"overall": overall, **settings, "articles": articles}


def markdown_table(rows: Sequence[dict]) -> str:
    """rows: {"name", "accuracy", "ci95", "n"} and, for self-edit rows, "failed" of "total" evaluations -> a Markdown
    table in the paper's style. A row with failed self-edits says how many beside its score (they count as wrong);
    a row whose every self-edit failed reads as failed, not as a score of 0."""
    lines = ["| setting | accuracy | 95% CI | n passages |", "|---|---|---|---|"]
    for r in rows:
        acc, ci = score_cells(r["accuracy"], r.get("ci95"), r.get("failed", 0), r.get("total", 0))
        lines.append(f"| {r['name']} | {acc} | {ci} | {r['n']} |")
    return "\n".join(lines) + "\n"


def score_cells(accuracy: float, ci95: float | None, failed: int = 0, total: int = 0) -> tuple[str, str]:
    """The accuracy (%) and 95% CI cells of a table row: failed self-edit evaluations said beside the score (they
    count as wrong), and a row whose every evaluation failed shown as failed rather than as a score of 0."""
    ci = "n/a" if ci95 is None or math.isnan(ci95) else f"± {100 * ci95:.1f}"
    if total and failed == total:
        return f"FAILED ({failed} of {total} self-edits failed)", "n/a"
    acc = f"{100 * accuracy:.1f}"
    return (f"{acc} ({failed} of {total} self-edits failed, counted as wrong)" if failed else acc), ci


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (scipy comes with jax)."""
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def per_passage(results: dict, which: str = "adapter") -> dict[int, float]:
    """passage_index -> that passage's mean accuracy ("adapter": over its self-edits; "baseline": no TTT) from a run's
    results.json (`single_passage_results`)."""
    return {a["passage_index"]: a["stats"][f"{which}_mean"] for a in results["articles"]}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """b - a on the same passages (dicts of `per_passage`): the mean of the per-passage differences with the half-width
    of its 95% Student-t interval (n - 1 degrees of freedom, sample std of the differences / sqrt(n)). Because both
    settings are scored on the same passages, how hard a passage is cancels out of each difference; what is left is
    the noise of the two evaluations (self-edit sampling, TTT) and how much the gain itself varies across passages.
    `ci95_unpaired` is what comparing the two rows' own intervals would give: 1.96 * sqrt(se_a^2 + se_b^2)."""
    if set(a) != set(b):
        raise ValueError(f"paired difference needs the same passages on both sides: {sorted(set(a) ^ set(b))} differ")
    keys = sorted(a)
    diffs = [b[k] - a[k] for k in keys]
    n = len(diffs)
    out = {"mean": _mean(diffs), "n": n, "ci95": None, "ci95_unpaired": None, "sd": _std(diffs),
           "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs), "interval": "paired t"}
    if n > 1:
        out["ci95"] = t_quantile_975(n - 1) * out["sd"] / math.sqrt(n)
        out["ci95_unpaired"] = 1.96 * math.sqrt((_std([a[k] for k in keys]) ** 2
                                                 + _std([b[k] for k in keys]) ** 2) / n)
    return out


def sampling_variance(results: dict) -> float:
    """The part of one passage's mean accuracy variance that comes from which self-edits were sampled: the mean over
    passages of (sample std over its self-edits)^2 / (number of self-edits); 0.0 with one self-edit per passage."""
    parts = [a["stats"]["adapter_std_over_completions"] ** 2 / len(a["completions"]) for a in results["articles"]
             if len(a["completions"]) > 1]
    return _mean(parts)
