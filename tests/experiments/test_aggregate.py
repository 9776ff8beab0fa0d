"""experiments.aggregate: the original's average_results.py numbers, and pooled statistics recovered exactly."""

import json
import os

import numpy as np
import pytest

from experiments import aggregate


def _run(tmp_path, name, matrices):
    """A continual run directory whose results.json summarises `matrices` (one per sequence) as the experiment does
    (np.mean and np.std over sequences)."""
    m = np.asarray(matrices, np.float64)
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"mean_over_sequences": m.mean(0).tolist(),
                                                "std_over_sequences": m.std(0).tolist(), "n_sequences": len(m)}))
    return str(d)


def test_original_average_and_exact_pooled_statistics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = rng.random((3, 3, 2))  # 3 sequences of a 3x2 matrix
    b = rng.random((5, 3, 2))
    runs = [_run(tmp_path, "r0", a), _run(tmp_path, "r1", b)]
    out = tmp_path / "overall.json"
    assert aggregate.main(runs + ["--out", str(out)]) == 0
    agg = json.loads(out.read_text())
    # the original: plain averages of the runs' means and stds, the total count
    np.testing.assert_allclose(agg["mean_over_sequences"], (a.mean(0) + b.mean(0)) / 2)
    np.testing.assert_allclose(agg["std_over_sequences"], (a.std(0) + b.std(0)) / 2)
    assert agg["n_sequences"] == 8 and agg["n_runs"] == 2
    # pooled: exactly the statistics of all 8 sequences together
    both = np.concatenate([a, b])
    np.testing.assert_allclose(agg["pooled_mean_over_sequences"], both.mean(0))
    np.testing.assert_allclose(agg["pooled_std_over_sequences"], both.std(0, ddof=1))
    np.testing.assert_allclose(agg["ci95_over_sequences"], 1.96 * both.std(0, ddof=1) / np.sqrt(8))
    printed = capsys.readouterr().out
    assert "8 sequences" in printed and "| none |" in printed and "±" in printed


@pytest.mark.parametrize("bad", ["missing", "not_continual", "shape", "twice"])
def test_bad_runs_are_one_line_errors(tmp_path, capsys, bad):
    good = _run(tmp_path, "good", np.zeros((2, 3, 2)))
    if bad == "twice":  # the same run by another spelling of its path would count its sequences twice
        other = os.path.join(str(tmp_path), ".", "good") + "/"
    elif bad == "missing":
        other = str(tmp_path / "nowhere")
    elif bad == "not_continual":
        (tmp_path / "eval").mkdir()
        (tmp_path / "eval" / "results.json").write_text(json.dumps({"overall": {}}))
        other = str(tmp_path / "eval")
    else:
        other = _run(tmp_path, "other", np.zeros((2, 4, 3)))
    assert aggregate.main([good, other]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    if bad == "twice":
        assert err[0].startswith(f"error: {tmp_path}/./good/ names the run {good} again"), err[0]
