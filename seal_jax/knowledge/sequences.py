"""Inner-loop training sequences built from a self-edit, exactly as the original's ``utils.build_train_sequences``.

    build_train_sequences(completion, passage, split_newlines=True)   # single-passage / continual runs
    build_train_sequences("", passage, split_newlines=True)           # passage only ("naive"): just the passage
    cpt_train_sequences(passages, k_completions=5)                    # one corpus for the multi-passage CPT run

Construction (spec S3), in order:

1. Split the raw completion on the literal ``---``, strip the pieces and drop the empty ones; when nothing is left
   keep the whole stripped completion (possibly ``""``).
2. With ``split_newlines``:
   * self-QA: when the raw completion matches both ``Question\\s+\\d+:`` and ``Answer\\s*:``, the ``---`` pieces are
     discarded and the stripped completion is cut before every newline followed by ``Question N:``. The chunks are
     not stripped (inner newlines and a trailing newline stay). The first chunk gets ``"Question 1: "`` + its
     stripped text unless it already starts with ``Question`` (the self-qa prompt ends with ``Question 1: ``, so the
     model's output begins with the first question's text).
   * otherwise every non-blank line of every piece (``str.splitlines``), stripped, is one example; when there are
     at least two and the second starts with ``1.`` the first is dropped (a preamble such as "Here are some
     implications:"). List markers are kept.
   The branch is chosen by the completion's content, not by the prompt variant that produced it.
3. Each example becomes ``"{title}\\n{example}"``.
4. The passage, ``"{title}\\n{context.strip()}"``, is always appended last.

Without ``split_newlines`` an empty completion therefore gives ``["{title}\\n", "{title}\\n{context}"]`` (the
original's naive CPT corpus), and with it just ``["{title}\\n{context}"]``.
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Sequence

from seal_jax.knowledge.data import Passage, take_completions

__all__ = [
    "SEGMENT_SEPARATOR",
    "build_train_sequences",
    "cpt_eval_questions",
    "cpt_train_sequences",
    "is_self_qa",
    "train_sequences_from_text",
]

SEGMENT_SEPARATOR = "---"
"""Literal separator between independent training examples inside one completion."""

_QUESTION_RE = re.compile(r"Question\s+\d+:")
_ANSWER_RE = re.compile(r"Answer\s*:")
_QUESTION_SPLIT_RE = re.compile(r"\n(?=Question\s+\d+:)")


def is_self_qa(completion: str) -> bool:
    """Whether ``completion`` takes the self-QA branch (it has a ``Question N:`` and an ``Answer:`` marker)."""
    return bool(_QUESTION_RE.search(completion)) and bool(_ANSWER_RE.search(completion))


def _segments(completion: str) -> list[str]:
    """Step 1: the stripped, non-empty ``---`` pieces, or the whole stripped completion when there are none."""
    pieces = [p.strip() for p in completion.split(SEGMENT_SEPARATOR) if p.strip()]
    return pieces or [completion.strip()]


def _self_qa_examples(completion: str) -> list[str]:
    """Step 2, self-QA branch: one chunk per ``Question N:`` block of the stripped completion."""
    chunks = _QUESTION_SPLIT_RE.split(completion.strip())
    if not chunks[0].lstrip().startswith("Question"):
        chunks[0] = "Question 1: " + chunks[0].strip()
    return chunks


def _line_examples(segments: list[str]) -> list[str]:
    """Step 2, line branch: every non-blank stripped line; drop a preamble line before a ``1.`` list."""
    lines = [line.strip() for seg in segments for line in seg.splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("1."):
        lines = lines[1:]
    return lines


def train_sequences_from_text(completion: str, title: str, context: str, *, split_newlines: bool) -> list[str]:
    """The training sequences for one self-edit ``completion`` of the passage (``title``, ``context``).

    ``split_newlines`` has no default on purpose: the original's python default is off, but its single-passage and
    continual runs set it on, while its CPT runs leave it off.
    """
    examples = _segments(completion)
    if split_newlines:
        examples = _self_qa_examples(completion) if is_self_qa(completion) else _line_examples(examples)
    sequences = [f"{title}\n{example}" for example in examples]
    sequences.append(f"{title}\n{context.strip()}")
    return sequences


def build_train_sequences(completion: str, passage: Passage, *, split_newlines: bool) -> list[str]:
    """The training sequences for one self-edit ``completion`` of ``passage`` (see the module docstring)."""
    return train_sequences_from_text(completion, passage.title, passage.context, split_newlines=split_newlines)


def cpt_train_sequences(passages: Iterable[Passage], k_completions: int, *,
                        split_newlines: bool = False) -> list[str]:
    """The multi-passage (CPT) corpus: every passage's sequences for each of its first ``k_completions`` non-empty
    self-edits, concatenated in passage order; ``k_completions=0`` uses the empty completion (passage only).

    The passage is repeated once per completion, as in the original. ``split_newlines`` defaults to off because the
    original's CPT script never turns it on (spec S3/CPT).
    """
    if k_completions < 0:
        raise ValueError(f"cpt_train_sequences: k_completions must be non-negative, got {k_completions}")
    corpus: list[str] = []
    for passage in passages:
        completions = take_completions(passage, k_completions) if k_completions > 0 else ("",)
        for completion in completions:
            corpus.extend(build_train_sequences(completion, passage, split_newlines=split_newlines))
    return corpus


def cpt_eval_questions(question_counts: Sequence[int], limit: int | None) -> list[tuple[int, int]]:
    """The (passage, question) pairs a CPT run is quizzed on, in order: all of them, or with ``limit`` the original's
    ``--eval_question_limit`` (a debugging switch): the questions of every passage in order, shuffled with
    ``random.seed(43)``, the first ``limit`` kept."""
    pairs = [(p, q) for p, n in enumerate(question_counts) for q in range(n)]
    if limit:
        if limit < 0:
            raise ValueError(f"cpt_eval_questions: limit must be positive, got {limit}")
        random.Random(43).shuffle(pairs)  # the same permutation as random.seed(43); random.shuffle(pairs)
        pairs = pairs[:limit]
    return pairs
