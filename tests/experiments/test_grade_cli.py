"""experiments.grade: grades a JSONL file (offline grader), writes `correct` per row, reports agreement and speed,
and turns bad input into a one-line error with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.grade import main

ROWS = [
    {"question": "What genus has self-fertilization been seen?", "gold": "Mnemiopsis", "prediction": "Mnemiopsis",
     "gpt41_correct": True, "id": 1},
    {"question": "What genus has self-fertilization been seen?", "gold": "Mnemiopsis", "prediction": "",
     "gpt41_correct": False, "id": 2},
    {"question": "Greece's Jewish community spoke what language traditionally?", "gold": "Ladino",
     "prediction": "Greek", "gpt41_correct": False, "id": 3},
    {"question": "Who did Dinwiddie order to address French in Virginia territory?", "gold": "Major George Washington",
     "prediction": "George Washington", "gpt41_correct": True, "id": 4},
]


def _write(path: Path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_grades_and_reports_agreement(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "sub" / "out.jsonl"
    assert main(["--input", str(src), "--output", str(out)]) == 0
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert [r["correct"] for r in rows] == [True, False, False, True]
    assert all(isinstance(r["correct"], bool) and r["prediction"] == s["prediction"] for r, s in zip(rows, ROWS))
    text = capsys.readouterr().out
    assert "2/4 rows graded correct" in text
    assert "rows/s" in text
    assert "agreement with GPT-4.1: 1.0000 on 4 rows" in text


def test_rows_without_verdicts_and_blank_lines(tmp_path, capsys):
    plain = [{k: v for k, v in r.items() if k != "gpt41_correct"} for r in ROWS[:2]]
    src = _write(tmp_path / "in.jsonl", [plain[0], "", plain[1]])
    out = tmp_path / "out.jsonl"
    assert main(["--input", str(src), "--output", str(out), "--grader", "offline"]) == 0
    assert [json.loads(ln)["correct"] for ln in out.read_text().splitlines()] == [True, False]
    assert "agreement" not in capsys.readouterr().out


def test_split_filters_by_question(tmp_path, capsys):
    from seal_jax.knowledge.grader import split_of

    fit_q = "Who was appointed as second in command to Lor Loudoun in 1756?"
    assert [split_of(r["question"]) for r in ROWS] == ["report", "report", "select", "report"]
    assert split_of(fit_q) == "fit"
    rows = ROWS + [{"question": fit_q, "gold": "Major General James Abercrombie", "prediction": "Lord Loudoun.",
                    "id": 5}]
    src = _write(tmp_path / "in.jsonl", rows)
    for split, want in (("fit", [5]), ("select", [3]), ("report", [1, 2, 4])):
        out = tmp_path / f"{split}.jsonl"
        assert main(["--input", str(src), "--output", str(out), "--split", split]) == 0
        assert [json.loads(ln)["id"] for ln in out.read_text().splitlines()] == want


@pytest.mark.parametrize("lines, message", [
    ([ROWS[0], "{not json"], "line 2 is not valid JSON"),
    ([ROWS[0], {"question": "q", "prediction": "p"}], "line 2 lacks the field 'gold'"),
    ([{"question": "q", "gold": "g", "prediction": None}], "line 1: field 'prediction' is not a string"),
    (["[1, 2]"], "line 1 is not a JSON object"),
])
def test_bad_rows_give_one_line_errors(tmp_path, capsys, lines, message):
    src = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_missing_input_and_missing_model(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err
    src = _write(tmp_path / "in.jsonl", ROWS[:1])
    assert main(["--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--grader", "llm"]) == 2
    assert "--grader llm needs --model" in capsys.readouterr().err
    assert main(["--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--grader", "llm",
                 "--model", str(tmp_path / "no_such_dir")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path):
    src = _write(tmp_path / "in.jsonl", ["{broken"])
    proc = subprocess.run([sys.executable, "-m", "experiments.grade", "--input", str(src), "--output",
                           str(tmp_path / "o.jsonl")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {src}: line 1 is not valid JSON (Expecting property name enclosed in " \
                                  f"double quotes)"
