"""Grade SQuAD-style answers from a JSONL file and write each row back with a boolean ``correct``.

    python -m experiments.grade --input IN.jsonl --output OUT.jsonl                  # offline grader (CPU)
    python -m experiments.grade --input IN.jsonl --output OUT.jsonl --grader llm --model /path/to/judge
    python -m experiments.grade --input IN.jsonl --output OUT.jsonl --grader openai \\
        --base-url http://127.0.0.1:8000/v1 --api-model gpt-4.1                       # key from $OPENAI_API_KEY

Every input row needs string fields ``question``, ``gold`` and ``prediction``; other fields are kept. When rows carry
``gpt41_correct`` the agreement with those GPT-4.1 verdicts is printed with its confusion counts. The grading speed
(rows/s, model loading excluded) is always printed, so running the offline grader on the verdicts file doubles as its
CPU benchmark. ``--split fit|select|report`` keeps only the rows of that part of the offline grader's by-question
split (``seal_jax.knowledge.grader.SPLITS``): it was chosen by cross-validation over "fit" and "select" and fit on
both, and only measured on "report".

Bad input (a missing file, invalid JSON, a row without a required field) stops with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from seal_jax.runs import ArgumentParser, cli, read_jsonl_strict

REQUIRED = ("question", "gold", "prediction")


class InputError(Exception):
    """A problem with the command line's input that is reported as one line (exit code 2)."""


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file, each checked for the string fields ``question``, ``gold``, ``prediction``."""
    if not Path(path).is_file():
        raise InputError(f"input file not found: {path}")
    try:
        return read_jsonl_strict(path, {key: str for key in REQUIRED})
    except ValueError as e:
        raise InputError(str(e)) from None


def build_grader(args: argparse.Namespace):
    """The grader the command line asks for (the LLM judge loads its model here)."""
    from seal_jax.knowledge.grader import make_grader

    if args.grader == "offline":
        return make_grader("offline", params_path=args.params)
    if args.grader == "openai":
        return make_grader("openai", base_url=args.base_url, model=args.api_model, temperature=args.temperature,
                           workers=args.workers)
    if not args.model:
        raise InputError("--grader llm needs --model DIR (a local HF checkpoint directory)")
    if not Path(args.model).is_dir():
        raise InputError(f"model directory not found: {args.model}")
    import seal_jax
    from seal_jax.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.from_dir(args.tokenizer or args.model)
        model = seal_jax.load_pretrained(args.model, dtype=args.dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load the judge model: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return make_grader("llm", model=model, tokenizer=tokenizer, batch_size=args.batch_size)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m experiments.grade", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL rows with question, gold, prediction")
    ap.add_argument("--output", required=True, help="JSONL written with each row plus a boolean 'correct'")
    ap.add_argument("--grader", default="offline", choices=["offline", "llm", "openai"])
    ap.add_argument("--split", default="all", choices=["all", "fit", "select", "report"],
                    help="grade only the questions of one part of the offline grader's split (default: every row)")
    g = ap.add_argument_group("offline grader")
    g.add_argument("--params", default=None, help="parameters JSON (default: the shipped offline_grader.json)")
    g = ap.add_argument_group("LLM judge")
    g.add_argument("--model", default=None, help="local HF checkpoint directory of the judge")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--batch-size", type=int, default=32)
    g = ap.add_argument_group("OpenAI-compatible endpoint")
    g.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)")
    g.add_argument("--api-model", default=None, help="model name at the endpoint (default: gpt-4.1)")
    g.add_argument("--temperature", type=float, default=None, help="default: the endpoint's own")
    g.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    return ap.parse_args(argv)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = read_rows(args.input)
        if args.split != "all":
            from seal_jax.knowledge.grader import split_of
            rows = [r for r in rows if split_of(r["question"]) == args.split]
        grader = build_grader(args)
    except (InputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    t0, c0 = time.perf_counter(), time.process_time()
    correct = grader.grade([r["question"] for r in rows], [r["gold"] for r in rows],
                           [r["prediction"] for r in rows])
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0

    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            for row, ok in zip(rows, correct):
                fh.write(json.dumps({**row, "correct": bool(ok)}, ensure_ascii=False) + "\n")
    except OSError as e:
        print(f"error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2

    n = len(rows)
    print(f"grader {args.grader}: {sum(correct)}/{n} rows graded correct"
          + (f" ({sum(correct) / n:.4f})" if n else "") + f", written to {out}")
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"speed: {n} rows in {seconds:.2f}s = {rate:,.0f} rows/s (CPU time of this process: {cpu_seconds:.2f}s)")
    judged = [(r["gpt41_correct"], ok) for r, ok in zip(rows, correct) if isinstance(r.get("gpt41_correct"), bool)]
    if judged:
        tp = sum(g and o for g, o in judged)
        tn = sum(not g and not o for g, o in judged)
        fp = sum(o and not g for g, o in judged)
        fn = sum(g and not o for g, o in judged)
        print(f"agreement with GPT-4.1: {(tp + tn) / len(judged):.4f} on {len(judged)} rows "
              f"(both yes {tp}, both no {tn}, only ours yes {fp}, only GPT-4.1 yes {fn})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
