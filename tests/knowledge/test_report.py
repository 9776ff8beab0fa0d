"""The run JSON in the original's schema: macro means, sample standard deviations (the original's statistics.stdev)
and per-question gains, worked out by hand."""

import pytest

from seal_jax.knowledge.data import Passage, Question
from seal_jax.knowledge.report import single_passage_results


def _eval(pi, ci, rep, correct):
    return {"passage_index": pi, "completion_index": ci, "rep": rep, "accuracy": sum(correct) / len(correct),
            "answers": ["a"] * len(correct), "correct": correct, "failed": False, "n_sequences": 2,
            "train_tokens": 10}


def test_sample_stds_and_gains():
    qs = (Question("q1", "a1"), Question("q2", "a2"))
    passages = [Passage("t0", "c0", qs, ("s0", "s1")), Passage("t1", "c1", qs, ("s0", "s1"))]
    baseline = {0: {"answers": ["x", "y"], "correct": [True, False]},
                1: {"answers": ["x", "y"], "correct": [False, False]}}
    evals = [_eval(0, 0, 0, [True, True]), _eval(0, 0, 1, [False, True]),   # completion 0: 1.0, 0.5
             _eval(0, 1, 0, [False, False]), _eval(0, 1, 1, [False, False]),  # completion 1: 0.0, 0.0
             _eval(1, 0, 0, [True, False]), _eval(1, 1, 0, [True, True])]     # one rep each: 0.5 and 1.0
    r = single_passage_results(passages, baseline, evals, {})
    a0, a1 = r["articles"]
    c00 = a0["completions"][0]["stats"]
    # sample std of [1.0, 0.5]: |1.0 - 0.5| / sqrt(2); the population std would be 0.25
    assert c00["adapter_mean"] == 0.75 and c00["adapter_std"] == pytest.approx(0.5 / 2 ** 0.5)
    assert a0["completions"][1]["stats"]["adapter_std"] == 0.0
    assert a1["completions"][0]["stats"]["adapter_std"] == 0.0  # one repetition: 0.0, as the original
    # article means: passage 0 = mean(0.75, 0.0) = 0.375, std over completions = 0.75 / sqrt(2)
    assert a0["stats"]["adapter_mean"] == 0.375
    assert a0["stats"]["adapter_std_over_completions"] == pytest.approx(0.75 / 2 ** 0.5)
    # passage 1 = mean(0.5, 1.0) = 0.75; overall macro mean 0.5625, sample std of [0.375, 0.75] = 0.375 / sqrt(2)
    o = r["overall"]
    assert o["adapter_mean_accuracy"] == pytest.approx(0.5625)
    assert o["adapter_std_of_article_means"] == pytest.approx(0.375 / 2 ** 0.5)
    assert o["baseline_std_of_article_means"] == pytest.approx(0.5 / 2 ** 0.5)  # baselines 0.5 and 0.0
    # per-question gains: adapter_correct - baseline_correct
    gains = [q["gain"] for q in a0["completions"][0]["questions"]]
    assert gains == [0, 1, -1, 1]  # rep 0: (T vs T, T vs F); rep 1: (F vs T, T vs F)


def test_paired_difference_by_hand():
    from seal_jax.knowledge.report import paired_difference, t_quantile_975
    # Student t 97.5% quantiles from the printed tables
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(3) == pytest.approx(3.18245, abs=1e-5)
    assert t_quantile_975(63) == pytest.approx(1.99834, abs=1e-5)
    a = {0: 0.2, 1: 0.4, 2: 0.6, 3: 0.0}
    b = {3: 0.2, 2: 1.0, 1: 0.4, 0: 0.4}  # matched by passage index, not by order
    d = paired_difference(a, b)
    # differences [0.2, 0.0, 0.4, 0.2]: mean 0.2, squared deviations 0 + 0.04 + 0.04 + 0 = 0.08,
    # sd = sqrt(0.08 / 3) = 0.163299, se = sd / 2 = 0.0816497, half-width = 3.18245 * se = 0.259845
    assert d["mean"] == pytest.approx(0.2) and d["n"] == 4
    assert d["sd"] == pytest.approx(0.163299, abs=1e-6)
    assert d["ci95"] == pytest.approx(0.259845, abs=1e-6)
    assert (d["better"], d["worse"]) == (3, 0)
    # unpaired: var(a) = 0.2 / 3, var(b) = 0.36 / 3 -> 1.96 * sqrt((0.066667 + 0.12) / 4) = 1.96 * 0.2160247 = 0.4234084
    assert d["ci95_unpaired"] == pytest.approx(0.4234084, abs=1e-6)
    assert paired_difference({0: 0.5}, {0: 1.0})["ci95"] is None  # one passage: no interval
    with pytest.raises(ValueError):
        paired_difference({0: 0.1, 1: 0.2}, {0: 0.1, 2: 0.2})


def test_per_passage_and_sampling_variance():
    from seal_jax.knowledge.report import per_passage, sampling_variance
    res = {"articles": [
        {"passage_index": 3, "stats": {"baseline_mean": 0.2, "adapter_mean": 0.5, "adapter_std_over_completions": 0.1},
         "completions": [{}, {}]},
        {"passage_index": 7, "stats": {"baseline_mean": 0.0, "adapter_mean": 0.8, "adapter_std_over_completions": 0.3},
         "completions": [{}, {}, {}]}]}
    assert per_passage(res) == {3: 0.5, 7: 0.8} and per_passage(res, "baseline") == {3: 0.2, 7: 0.0}
    # (0.1^2 / 2 + 0.3^2 / 3) / 2 = (0.005 + 0.03) / 2
    assert sampling_variance(res) == pytest.approx(0.0175)
