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
        "failed_self_edits": sum(r["failed"] for r in evals),
    }
    return {"overall": overall, **settings, "articles": articles}


def markdown_table(rows: Sequence[dict]) -> str:
    """rows: {"name", "accuracy", "ci95", "n"} -> a Markdown table in the paper's style."""
    lines = ["| setting | accuracy | 95% CI | n passages |", "|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r.get("ci95") is None or math.isnan(r["ci95"]) else f"± {100 * r['ci95']:.1f}"
        lines.append(f"| {r['name']} | {100 * r['accuracy']:.1f} | {ci} | {r['n']} |")
    return "\n".join(lines) + "\n"
