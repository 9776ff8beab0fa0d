"""seal_jax.knowledge.sequences: every branch of `build_train_sequences` on hand-made completions, and the sequence
counts the spec derives from the shipped self-edit files (S3 typical counts, the CPT corpus sizes)."""

from __future__ import annotations

import statistics

import pytest

from seal_jax.knowledge.data import Passage, load_passages
from seal_jax.knowledge.sequences import (
    build_train_sequences,
    cpt_eval_questions,
    cpt_train_sequences,
    is_self_qa,
    train_sequences_from_text,
)
from tests.conftest import shared_path

P = Passage("Title", "  The passage text.\n", ())
PASSAGE_SEQ = "Title\nThe passage text."  # the context is stripped, the title prefix added


def seqs(completion: str, split_newlines: bool = True) -> list[str]:
    return build_train_sequences(completion, P, split_newlines=split_newlines)


def bodies(completion: str, split_newlines: bool = True) -> list[str]:
    """The examples without the title prefix, passage excluded (after checking both)."""
    out = seqs(completion, split_newlines)
    assert out[-1] == PASSAGE_SEQ
    assert all(s.startswith("Title\n") for s in out)
    return [s[len("Title\n"):] for s in out[:-1]]


# ------------------------------------------------------------------------------------------------ no split_newlines

def test_whole_completion_is_one_example():
    assert seqs("  1. a\n2. b  ", split_newlines=False) == ["Title\n1. a\n2. b", PASSAGE_SEQ]


def test_dash_separator_splits_strips_and_drops_empty_pieces():
    assert bodies("first\n---\n\n---   second part \n--- \n", split_newlines=False) == ["first", "second part"]
    assert bodies("a---b", split_newlines=False) == ["a", "b"]


def test_only_separators_keep_the_stripped_completion():
    assert bodies(" --- --- ", split_newlines=False) == ["--- ---"]
    assert bodies(" --- --- ") == ["--- ---"]


def test_empty_completion():
    assert seqs("", split_newlines=False) == ["Title\n", PASSAGE_SEQ]  # the original's naive CPT sequence
    assert seqs("  \n ", split_newlines=False) == ["Title\n", PASSAGE_SEQ]
    assert seqs("") == [PASSAGE_SEQ]  # split_newlines: passage only
    assert seqs(" \n\n ") == [PASSAGE_SEQ]


# ------------------------------------------------------------------------------------------------ line branch

def test_lines_are_stripped_and_blank_lines_dropped():
    assert bodies("  alpha  \n\n \t\nbeta\r\n- gamma\n") == ["alpha", "beta", "- gamma"]


def test_lines_of_all_dash_pieces_in_order():
    assert bodies("a\nb\n---\nc\n\n---\nd") == ["a", "b", "c", "d"]


def test_preamble_before_numbered_list_is_dropped():
    assert bodies("Here are the implications:\n1. one\n2. two") == ["1. one", "2. two"]
    assert bodies("Intro\n---\n1. one") == ["1. one"]  # the rule looks at the flattened lines
    assert bodies("Intro\n\n  1. one\n2. two") == ["1. one", "2. two"]  # blank lines go first, then the check


def test_preamble_rule_edge_cases():
    assert bodies("Intro\n- one\n- two") == ["Intro", "- one", "- two"]  # only a "1." list triggers it
    assert bodies("1. one\n2. two") == ["1. one", "2. two"]
    assert bodies("only line") == ["only line"]
    assert bodies("Intro\n10. ten") == ["Intro", "10. ten"]
    assert bodies("a\nb\n1. c") == ["a", "b", "1. c"]  # only the second line is checked
    # Kept quirk of the original: any second line starting with "1." counts, e.g. a number.
    assert bodies("The count rose.\n1.5 million people moved.") == ["1.5 million people moved."]


def test_splitlines_semantics():
    assert bodies("a\x0bb\u2028c\rd") == ["a", "b", "c", "d"]


# ------------------------------------------------------------------------------------------------ self-QA branch

def test_self_qa_detection():
    assert is_self_qa("Question 1: x\nAnswer: y")
    assert is_self_qa("Question  12: x\nAnswer : y")
    assert is_self_qa("Question\n3: x Answer:")
    assert not is_self_qa("Question 1: x only")
    assert not is_self_qa("Answer: y only")
    assert not is_self_qa("Question1: x\nAnswer: y")  # at least one whitespace before the number
    assert not is_self_qa("question 1: x\nanswer: y")  # case-sensitive


def test_self_qa_continuation_gets_question_1_prefix():
    completion = "Who fled?\nAnswer: the Shah\nQuestion 2: Which town?\nAnswer: Otrar"
    assert bodies(completion) == ["Question 1: Who fled?\nAnswer: the Shah", "Question 2: Which town?\nAnswer: Otrar"]


def test_self_qa_chunks_keep_inner_whitespace():
    completion = "  Question 1: a?\nAnswer: b\n\nQuestion 2: c?\n  Answer: d  \n"
    assert bodies(completion) == ["Question 1: a?\nAnswer: b\n", "Question 2: c?\n  Answer: d"]


def test_self_qa_ignores_dash_pieces_and_inline_questions():
    completion = "Question 1: a?\nAnswer: b\n---\nQuestion 2: c? (see Question 3: d)\nAnswer: e"
    assert bodies(completion) == ["Question 1: a?\nAnswer: b\n---", "Question 2: c? (see Question 3: d)\nAnswer: e"]


def test_self_qa_first_chunk_starting_with_question_word_is_kept():
    assert bodies("Questions about x\nAnswer: y\nQuestion 2: z\nAnswer: w") == [
        "Questions about x\nAnswer: y", "Question 2: z\nAnswer: w"]


def test_self_qa_only_with_split_newlines():
    completion = "Who?\nAnswer: x\nQuestion 2: What?\nAnswer: y"
    assert bodies(completion, split_newlines=False) == [completion]


# ------------------------------------------------------------------------------------------------ API

def test_title_prefix_and_passage_last():
    passage = Passage("A {t}", "ctx {c}", ())
    assert build_train_sequences("x\ny", passage, split_newlines=True) == ["A {t}\nx", "A {t}\ny", "A {t}\nctx {c}"]
    assert train_sequences_from_text("x\ny", "A {t}", "ctx {c}", split_newlines=True) == [
        "A {t}\nx", "A {t}\ny", "A {t}\nctx {c}"]


def test_split_newlines_must_be_given():
    with pytest.raises(TypeError):
        build_train_sequences("x", P)  # type: ignore[call-arg]


def test_cpt_eval_question_limit_is_the_originals_seed_43_shuffle():
    # counts 2, 3, 1 -> questions (0,0) (0,1) (1,0) (1,1) (1,2) (2,0); random.seed(43); random.shuffle gives
    # (2,0) (1,2) (1,1) (0,1) (1,0) (0,0), worked out with the original's two lines on this list
    assert cpt_eval_questions([2, 3, 1], 3) == [(2, 0), (1, 2), (1, 1)]
    assert cpt_eval_questions([2, 3, 1], 100) == [(2, 0), (1, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
    assert cpt_eval_questions([2, 3, 1], None) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0)]  # no limit: all
    with pytest.raises(ValueError):
        cpt_eval_questions([1], -1)


def test_cpt_corpus_small():
    a = Passage("A", "ca", (), completions=("x\ny", "", "z"))
    b = Passage("B", "cb", (), completions=("w",))
    assert cpt_train_sequences([a, b], 2) == ["A\nx\ny", "A\nca", "A\nz", "A\nca", "B\nw", "B\ncb"]
    assert cpt_train_sequences([a, b], 2, split_newlines=True) == [
        "A\nx", "A\ny", "A\nca", "A\nz", "A\nca", "B\nw", "B\ncb"]
    assert cpt_train_sequences([a, b], 0) == ["A\n", "A\nca", "B\n", "B\ncb"]
    assert cpt_train_sequences([Passage("C", "cc", (), completions=("", ""))], 1) == []
    with pytest.raises(ValueError):
        cpt_train_sequences([a], -1)


# ------------------------------------------------------------------------------------------------ shipped files

@pytest.fixture(scope="module")
def self_edits() -> dict[str, list[Passage]]:
    names = ["base_val", "iter2_val", "gpt4_1_val"]
    return {n: load_passages(shared_path("data", "seal_self_edits", f"{n}.json")) for n in names}


@pytest.mark.parametrize("name, median, maximum", [("base_val", 7, 57), ("gpt4_1_val", 14, 36),
                                                   ("iter2_val", 7, 19)])
def test_spec_sequence_counts_first_completion(self_edits, name, median, maximum):
    """Spec S3: sequences per self-edit with split_newlines, first completion (passage included)."""
    counts = [len(build_train_sequences(p.completions[0], p, split_newlines=True)) for p in self_edits[name]]
    assert statistics.median(counts) == median and max(counts) == maximum
    for p in self_edits[name]:
        assert build_train_sequences(p.completions[0], p, split_newlines=True)[-1] == f"{p.title}\n{p.context}"


def test_spec_sequence_lengths(self_edits):
    """Spec S3: median sequence length ~140 characters; the passage sequence is up to ~3.3k characters."""
    lengths = [len(s) for p in self_edits["base_val"]
               for s in build_train_sequences(p.completions[0], p, split_newlines=True)]
    assert 130 <= statistics.median(lengths) <= 150
    assert 3200 <= max(len(f"{p.title}\n{p.context}") for p in self_edits["base_val"]) <= 3400


@pytest.mark.parametrize("name, k, expected", [("base_val", 5, 2000), ("iter2_val", 5, 2000),
                                               ("gpt4_1_val", 5, 2082), ("base_val", 0, 400)])
def test_spec_cpt_corpus_sizes(self_edits, name, k, expected):
    """Spec S3/CPT: without split_newlines the CPT corpus is 200x5x2 = 2000 sequences (2082 for GPT-4.1, whose
    completions contain `---`), and 400 for the naive run (passage plus an empty "{title}\\n" per passage)."""
    assert len(cpt_train_sequences(self_edits[name], k)) == expected
