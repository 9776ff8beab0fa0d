"""SEAL-format SQuAD passages: loading, validation, the seed-42 passage selection, stored self-edits and SFT rows.

The SEAL knowledge-incorporation data is a JSON list of passages, each
``{"title", "context", "questions": [{"question", "answer"}], "completions": [str], "prompt": str}``; the last two
keys only appear in self-edit files (``synthetic_data/{train,eval}/*.json``), where ``completions`` holds the k
sampled self-edits of the passage and ``prompt`` the exact generation prompt that produced them.

    passages = load_passages("squad_val.json")             # 2067 passages, 10570 questions
    eval_set = select_passages(passages, 200)              # the original's eval set: 200 passages, 974 questions
    gpt = load_passages("gpt4_1_val.json")                 # the same 200 passages + 5 GPT-4.1 self-edits each
    take_completions(gpt[0], k=1)                          # what the single-passage driver trains on (k=1)
    rows = load_sft_examples("sft_best1of5_iter0.jsonl")   # ReST-EM M-step rows {prompt, completion}

Passage selection (spec S1): the original loads the whole list, calls ``random.seed(42)`` and ``random.shuffle`` on
it, then slices ``[start : start + n]``. ``select_passages`` does the same with a private ``random.Random(42)``,
which draws the identical permutation without touching the global ``random`` state.

SQuAD from the hub: ``load_squad`` goes through ``datasets.load_dataset`` and converts rows with
``squad_rows_to_passages`` (consecutive rows with the same title and context form one passage, in file order, with
the first gold answer of each question). Offline it fails within ``probe_timeout`` seconds (5 by default; at
once when the host name does not resolve) with a one-line ``HubUnavailableError``, instead of the ~25 s of retries
``datasets`` itself spends before giving up.
"""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from seal_jax.runs import read_jsonl_strict

__all__ = [
    "EVAL_N_PASSAGES",
    "SHUFFLE_SEED",
    "HubUnavailableError",
    "Passage",
    "Question",
    "SFTExample",
    "load_passages",
    "load_sft_examples",
    "load_squad",
    "passages_from_records",
    "save_passages",
    "select_passages",
    "squad_rows_to_passages",
    "take_completions",
]

SHUFFLE_SEED = 42
"""Seed of the original's passage shuffle (``random.seed(42); random.shuffle(data)`` in make_squad_data.py)."""

EVAL_N_PASSAGES = 200
"""Passages in the original's evaluation set: the first 200 of the seed-42 shuffle of squad_val (974 questions)."""


@dataclass(frozen=True)
class Question:
    """One SQuAD question with a single gold answer string (SEAL keeps the first SQuAD answer)."""

    question: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        """The SEAL JSON form ``{"question", "answer"}``."""
        return {"question": self.question, "answer": self.answer}


@dataclass(frozen=True)
class Passage:
    """A SEAL-format passage.

    ``completions`` are the stored self-edits (empty for plain SQuAD passages). ``prompt`` is the exact generation
    prompt stored alongside them in self-edit files (None when the source has none); keep it when building SFT rows
    so the policy is trained on the wording it was sampled with.
    """

    title: str
    context: str
    questions: tuple[Question, ...]
    completions: tuple[str, ...] = ()
    prompt: str | None = None

    @property
    def n_questions(self) -> int:
        """Number of questions of the passage."""
        return len(self.questions)

    def to_dict(self) -> dict[str, Any]:
        """The SEAL JSON form; ``completions`` and ``prompt`` are written only when present."""
        out: dict[str, Any] = {"title": self.title, "context": self.context,
                               "questions": [q.to_dict() for q in self.questions]}
        if self.completions:
            out["completions"] = list(self.completions)
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True)
class SFTExample:
    """One ReST-EM M-step row: the exact self-edit generation prompt and the selected (stripped) completion."""

    prompt: str
    completion: str


class HubUnavailableError(ConnectionError):
    """The dataset hub cannot be reached (or the dataset could not be fetched from it)."""


# --------------------------------------------------------------------------------------------------------------- #
# Validation and loading
# --------------------------------------------------------------------------------------------------------------- #

def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require_str(record: Mapping[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    return _text(record[key], f"{where}: field {key!r}")


def _text(value: Any, what: str) -> str:
    """A string that UTF-8 can encode: JSON's escapes can spell a lone surrogate ("\\ud800") that no tokenizer
    takes, so it is refused here, naming the record, not deep inside tokenisation."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {_type_name(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text ({e.reason} at character {e.start}: "
                         f"{value[e.start]!r})") from None
    return value


def _passage_from_record(record: Any, where: str) -> Passage:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected an object with title/context/questions, got {_type_name(record)}")
    title = _require_str(record, "title", where)
    context = _require_str(record, "context", where)
    if "questions" not in record:
        raise ValueError(f"{where}: missing field 'questions'")
    raw_questions = record["questions"]
    if not isinstance(raw_questions, list):
        raise ValueError(f"{where}: field 'questions' must be a list, got {_type_name(raw_questions)}")
    questions = []
    for j, q in enumerate(raw_questions):
        q_where = f"{where}: questions[{j}]"
        if not isinstance(q, Mapping):
            raise ValueError(f"{q_where}: expected an object with question/answer, got {_type_name(q)}")
        questions.append(Question(_require_str(q, "question", q_where), _require_str(q, "answer", q_where)))
    completions: tuple[str, ...] = ()
    if "completions" in record:
        raw_completions = record["completions"]
        if not isinstance(raw_completions, list):
            raise ValueError(f"{where}: field 'completions' must be a list, got {_type_name(raw_completions)}")
        completions = tuple(_text(c, f"{where}: completions[{j}]") for j, c in enumerate(raw_completions))
    prompt = None
    if "prompt" in record:
        prompt = _require_str(record, "prompt", where)
    return Passage(title=title, context=context, questions=tuple(questions), completions=completions, prompt=prompt)


def passages_from_records(records: Any, *, source: str = "<records>") -> list[Passage]:
    """Validate SEAL-format records (a list of passage objects) and convert them to ``Passage``s.

    Unknown keys are ignored. On malformed input raises a one-line ``ValueError`` naming ``source``, the entry
    index and the offending field, e.g. ``squad_val.json: entry 3: questions[1]: missing field 'answer'``.
    """
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of passages, got {_type_name(records)}")
    return [_passage_from_record(r, f"{source}: entry {i}") for i, r in enumerate(records)]


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid UTF-8 (byte {e.start})") from None


def load_passages(path: str | os.PathLike[str]) -> list[Passage]:
    """Load a SEAL-format JSON file (squad_{train,val}.json or a self-edit file) as validated ``Passage``s.

    Raises ``FileNotFoundError`` when the file is absent and a one-line ``ValueError`` (file, entry index, field)
    when it is not valid SEAL-format JSON.
    """
    name = os.fspath(path)
    text = _read_text(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return passages_from_records(records, source=name)


def save_passages(path: str | os.PathLike[str], passages: Iterable[Passage], *, indent: int = 2) -> None:
    """Write passages as SEAL-format JSON (indented, non-ASCII kept, like the original's outputs)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump([p.to_dict() for p in passages], f, indent=indent, ensure_ascii=False)


def load_sft_examples(path: str | os.PathLike[str]) -> list[SFTExample]:
    """Load a ReST-EM SFT file (JSONL, one ``{"prompt", "completion"}`` object per line; blank lines skipped).

    Malformed lines raise a one-line ``ValueError`` naming the file and the 1-based line number.
    """
    return [SFTExample(r["prompt"], r["completion"])
            for r in read_jsonl_strict(path, {"prompt": str, "completion": str})]


# --------------------------------------------------------------------------------------------------------------- #
# Selection
# --------------------------------------------------------------------------------------------------------------- #

def select_passages(passages: Sequence[Passage], n: int | None = None, *, start: int = 0,
                    seed: int = SHUFFLE_SEED) -> list[Passage]:
    """The original's passage selection: shuffle a copy of the whole list with seed ``seed``, take ``[start:start+n]``.

    ``random.Random(seed).shuffle`` draws exactly the permutation of ``random.seed(seed); random.shuffle(...)``
    (the same Mersenne-Twister seeding), without changing the global ``random`` state. ``n=None`` takes everything
    from ``start`` on. The result depends on the input order, so pass the file's passages in file order.
    """
    if start < 0 or (n is not None and n < 0):
        raise ValueError(f"select_passages: start and n must be non-negative, got start={start}, n={n}")
    shuffled = list(passages)
    random.Random(seed).shuffle(shuffled)
    return shuffled[start:] if n is None else shuffled[start:start + n]


def take_completions(passage: Passage, k: int | None = None) -> tuple[str, ...]:
    """The self-edits a driver trains on: the passage's non-empty completions, then the first ``k`` of them.

    This is the single-passage driver's rule (empty strings dropped, then truncated to k). A passage-only ("naive")
    run is expressed by training on the empty completion ``""`` explicitly, since filtering leaves nothing here.
    """
    if k is not None and k < 0:
        raise ValueError(f"take_completions: k must be non-negative, got {k}")
    kept = tuple(c for c in passage.completions if c.strip())
    return kept if k is None else kept[:k]


# --------------------------------------------------------------------------------------------------------------- #
# SQuAD from the hub
# --------------------------------------------------------------------------------------------------------------- #

def squad_rows_to_passages(rows: Iterable[Mapping[str, Any]], *, underscores_to_spaces: bool = True,
                           source: str = "squad") -> list[Passage]:
    """Convert flat SQuAD rows (``{title, context, question, answers: {text: [...], ...}}``, one per question, as
    served by ``datasets``) to SEAL-format passages.

    Consecutive rows with the same (title, context) form one passage, so passages and questions keep the dataset
    order. Each question keeps its first gold answer, unchanged (SEAL's ``"golden anniversary"`` keeps its quotes).
    Hub titles are Wikipedia page names with underscores (``Super_Bowl_50``) where the SEAL files have spaces
    (``Super Bowl 50``); ``underscores_to_spaces`` (default) converts them. Rows without a gold answer raise a
    one-line ``ValueError`` naming the row.
    """
    passages: list[Passage] = []
    key: tuple[str, str] | None = None
    questions: list[Question] = []

    def flush() -> None:
        if key is not None:
            passages.append(Passage(title=key[0], context=key[1], questions=tuple(questions)))

    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a SQuAD row object, got {_type_name(row)}")
        title = _require_str(row, "title", where)
        context = _require_str(row, "context", where)
        question = _require_str(row, "question", where)
        answers = row.get("answers")
        texts = answers.get("text") if isinstance(answers, Mapping) else None
        if not isinstance(texts, Sequence) or isinstance(texts, str) or not texts:
            raise ValueError(f"{where}: field 'answers.text' must be a non-empty list of strings")
        if not isinstance(texts[0], str):
            raise ValueError(f"{where}: answers.text[0] must be a string, got {_type_name(texts[0])}")
        if underscores_to_spaces:
            title = title.replace("_", " ")
        if (title, context) != key:
            flush()
            key, questions = (title, context), []
        questions.append(Question(question, texts[0]))
    flush()
    return passages


def _hub_reachable(endpoint: str, timeout: float) -> tuple[bool, str]:
    """HEAD the hub endpoint: any HTTP answer (even an error status) means it is reachable."""
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError:
        return True, ""
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return False, " ".join(str(reason).split()) or type(e).__name__


def load_squad(split: str = "validation", *, dataset: str = "squad", endpoint: str | None = None,
               probe_timeout: float = 5.0, underscores_to_spaces: bool = True) -> list[Passage]:
    """SQuAD v1.1 through ``datasets.load_dataset(dataset, split=split)``, converted to SEAL-format passages.

    Before touching ``datasets`` the hub endpoint (``endpoint``, default ``huggingface_hub``'s, which honours
    ``HF_ENDPOINT``) is probed with a ``probe_timeout``-second HEAD request; when it does not answer a one-line
    ``HubUnavailableError`` is raised at once. With ``HF_HUB_OFFLINE`` set the probe is skipped and ``datasets``
    reads its local cache. For files already on disk use ``load_passages``.
    """
    from huggingface_hub import constants as hub_constants

    if not hub_constants.HF_HUB_OFFLINE:
        url = endpoint or hub_constants.ENDPOINT
        ok, reason = _hub_reachable(url, probe_timeout)
        if not ok:
            raise HubUnavailableError(
                f"cannot reach the dataset hub at {url} ({reason}); load a local SEAL-format JSON with load_passages")
    from datasets import load_dataset

    try:
        rows = load_dataset(dataset, split=split)
    except OSError as e:  # ConnectionError when the hub drops out, FileNotFoundError for an unknown/uncached dataset
        detail = " ".join(str(e).split())
        raise HubUnavailableError(f"could not load {dataset!r} split {split!r}: {type(e).__name__}: {detail}") from e
    return squad_rows_to_passages(rows, underscores_to_spaces=underscores_to_spaces, source=f"{dataset}[{split}]")
