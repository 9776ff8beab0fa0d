"""Graders for SQuAD-style answers: (question, gold answer, prediction) -> correct or not.

The original SEAL grades every answer with GPT-4.1 (spec S2 "Grading"): one API call per answer, a prompt that
judges the student answer against the gold answer only, and ``True`` iff the reply contains the word "yes" and not
the word "no". An empty prediction is ``False`` without a call. Three graders share that contract here:

``OfflineGrader`` (``make_grader("offline")``)
    A small gradient-boosted tree ensemble over hand-crafted lexical features, calibrated on the stored GPT-4.1
    verdicts (``squad_gpt41_verdicts_dev.jsonl``). It needs no accelerator, network or model and grades tens of
    thousands of rows in seconds on one CPU core. The parameters ship as ``offline_grader.json`` next to this file
    and are regenerated deterministically (no randomness is involved) with::

        python -m seal_jax.knowledge.grader --fit /path/to/squad_gpt41_verdicts_dev.jsonl \\
            --out seal_jax/knowledge/offline_grader.json

    Split: rows are divided BY QUESTION. A question goes to the held-out part iff
    ``int(sha1(split_key(question))[:8], 16) % 100 < 20`` (``split_key`` = the SQuAD-normalised question with any
    ``Topic: ...`` line removed), so no question is on both sides; the model is fit on the train part only and the
    held-out part (about 20% of the questions) measures agreement on verdicts it was not tuned on.

``LLMJudge`` (``make_grader("llm", model=..., tokenizer=...)``)
    Any local causal LM through ``seal_jax.generate`` (greedy, batched), prompted with ``GRADE_TEMPLATE``.

``OpenAIGrader`` (``make_grader("openai", base_url=..., model=...)``)
    An OpenAI-compatible ``/chat/completions`` endpoint over ``urllib`` (3 tries with backoff, ``False`` when all
    fail, as the original).

Every grader has ``grade(questions, golds, predictions) -> list[bool]`` (the ``GradeFn`` the knowledge-incorporation
loop calls; also available as ``grader(...)``) and ``grade_one(question, gold, prediction) -> bool``.

Features of the offline grader (``extract_features``; ``FEATURE_NAMES`` lists all of them). The prediction is seen
through four views: the answer text (cut where the model runs on into a new ``Q:``/``Question:`` block or echoes a
system prompt), its first paragraph, its first claim (first line without a list marker, joined with the next one
when it ends with ":") and the claim's first sentence. Per view: gold-in-prediction containment (contiguous match of
canonical tokens; also SQuAD-normalised substring), token recall/precision/F1 of stemmed content words, the same
restricted to gold words not already in the question, how many new words the view brings and how many of them are
in the gold, and how much of it just restates the question. Further: prediction-in-gold containment (short partial
answers such as "James Abercrombie" for "Major General James Abercrombie", and the gold without titles), fuzzy
(5-character prefix) and length-weighted recall, the longest common token run and bigram recall, gold alternatives
("savanna or desert", "... (HIV)"), acronyms ("AC" for "alternating current"); numbers with digits, number words,
ordinals and scales canonicalised to one value ("ten million" = "10,000,000", "Eleventh" = "11th"), years (equal
year sets, so "1840-1841" matches "16 September 1840 to 21 May 1841") and months found or contradicted; gold name
tokens found, foreign names in the claim; hedges, negations (also next to the gold), "or"/"and", commas, alternative
candidates in the first sentence, lists and unsure phrases; where the gold first appears (position, sentence);
character-trigram containment; the question type; lengths and line counts. The model is a 500-tree, depth-3
gradient-boosted ensemble (``fit_trees``, numpy only) on the logistic loss.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import re
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from seal_jax.runs import ArgumentParser, read_jsonl_strict

__all__ = [
    "DEFAULT_PARAMS_PATH",
    "FEATURE_NAMES",
    "GRADE_TEMPLATE",
    "HELDOUT_PERCENT",
    "LLMJudge",
    "OfflineGrader",
    "OpenAIGrader",
    "build_grade_prompt",
    "extract_features",
    "fit_offline_grader",
    "is_held_out",
    "load_verdicts",
    "make_grader",
    "normalize_answer",
    "parse_verdict",
    "split_key",
    "tokenize",
]

DEFAULT_PARAMS_PATH = Path(__file__).with_name("offline_grader.json")
HELDOUT_PERCENT = 20
PARAMS_FORMAT = "seal_jax.offline_grader/1"

# ============================================================================================== text normalisation

_FOLD_TABLE = str.maketrans({"æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ß": "ss", "ð": "d",
                             "Ð": "D", "þ": "th", "Þ": "Th", "ł": "l", "Ł": "L", "ı": "i", "’": "'", "‘": "'",
                             "ʼ": "'", "“": '"', "”": '"', "–": "-", "—": "-", "−": "-"})


def fold(text: str) -> str:
    """ASCII-fold `text`: strip accents ("Æthelred" -> "AEthelred", "Moïse" -> "Moise") and unify quotes/dashes."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKD", text.translate(_FOLD_TABLE))
    return "".join(c for c in text if not unicodedata.combining(c))


_PUNCT_RE = re.compile(r"[^\w\s]|_")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (lower case, punctuation removed, articles a/an/the dropped, whitespace
    collapsed), applied after accent folding so "Æthelred" and "Aethelred" agree."""
    text = _PUNCT_RE.sub("", fold(text).lower())
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


_TOPIC_RE = re.compile(r"^\s*Topic:[^\n]*\n")


def strip_topic(question: str) -> str:
    """The question without the ``Topic: {title}`` line the original drivers put in front of it."""
    return _TOPIC_RE.sub("", question, count=1)


def split_key(question: str) -> str:
    """The text a question is hashed on for the train/held-out split (normalised, topic line removed)."""
    return normalize_answer(strip_topic(question))


def is_held_out(question: str, percent: int = HELDOUT_PERCENT) -> bool:
    """Whether `question` belongs to the held-out part of the by-question split (sha1 bucket < `percent`)."""
    digest = hashlib.sha1(split_key(question).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 100 < percent


_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_POSSESSIVE_RE = re.compile(r"(\w)'s\b")


def tokenize(text: str) -> list[str]:
    """Lower-cased word and number tokens of `text` after folding; possessive 's and apostrophes dropped, thousands
    separators removed from numbers ("10,000,000" -> "10000000", "1840-1841." -> "1840", "1841")."""
    text = _POSSESSIVE_RE.sub(r"\1", fold(text).lower()).replace("'", "")
    out = []
    for tok in _TOKEN_RE.findall(text):
        if tok[0].isdigit() and "," in tok:
            tok = tok.replace(",", "")
        out.append(tok)
    return out


STOPWORDS = frozenset("""a an the of in on at to for from by with and or as is was were are be been being it its this
that these those which who whom whose what when where why how did do does done has have had he she they them their
his her him there than then so such into onto upon about over under after before during between within without also
not no but if while because i you we our your my me us can could would should will shall may might must st nd rd th s
""".split())

_SUFFIXES = ("ational", "ations", "ation", "ments", "ment", "ings", "ing", "ions", "ion", "ness", "ies", "ied",
             "ers", "er", "ed", "es", "ly", "al", "s", "e", "y")
_STEMS: dict[str, str] = {}


def stem(token: str) -> str:
    """A light suffix-stripping stem ("exploring"/"exploration" -> "explor"); numbers and short words are kept."""
    s = _STEMS.get(token)
    if s is None:
        s = token
        if not token[0].isdigit() and len(token) > 3:
            for suf in _SUFFIXES:
                if token.endswith(suf) and len(token) - len(suf) >= 3:
                    s = token[:-len(suf)]
                    break
        if len(_STEMS) < 200_000:
            _STEMS[token] = s
    return s


# ---------------------------------------------------------------------------------------------- numbers

_UNITS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
          "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
             "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
             "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "hundredth": 100}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_MONTHS = {"january", "february", "march", "april", "june", "july", "august", "september", "october", "november",
           "december"}  # "may" is left out: it is far more often the verb


def _num_str(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def canonical_tokens(tokens: Sequence[str]) -> list[str]:
    """Tokens with every number written one way: digits, number words ("twenty five"), ordinals ("eleventh") and
    scale words ("10 million", "ten million") become the digit string of their value ("25", "11", "10000000")."""
    out = []
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        value = None
        if t[0].isdigit():
            try:
                value = float(t)
            except ValueError:  # "1.2.3"-style section numbers stay as they are
                value = None
        elif t in _UNITS:
            value = float(_UNITS[t])
            nxt = tokens[i + 1] if i + 1 < n else ""
            if value >= 20 and nxt in _UNITS and _UNITS[nxt] < 10:
                value += _UNITS[nxt]
                i += 1
        elif t in _ORDINALS:
            value = float(_ORDINALS[t])
        if value is None:
            out.append(t)
        else:
            while i + 1 < n and tokens[i + 1] in _SCALES:
                value *= _SCALES[tokens[i + 1]]
                i += 1
            out.append(_num_str(value))
        i += 1
    return out


def _numbers(canon: Iterable[str]) -> set[float]:
    vals = set()
    for t in canon:
        if t[0].isdigit():
            try:
                vals.add(float(t))
            except ValueError:
                pass
    return vals


def _years(nums: set[float]) -> set[float]:
    return {v for v in nums if 1000 <= v <= 2100 and v == int(v)}


# ============================================================================================== features

_CUT_RE = re.compile(r"\n\s*(?:Q\s*:|Question\s*:|Answer\s*:|A\s*:|Human\s*:|Topic\s*:|Context\s*:|Passage\s*:|"
                     r"You are an AI)", re.IGNORECASE)
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_LIST_MARK_RE = re.compile(r"^(?:\d+[.)]|[-*•]|Step \d+:)\s*")
_LIST_LINE_RE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s", re.M)
_CAP_RE = re.compile(r"\b[A-Z][\w'-]*")

_HEDGES = frozenset({"or", "either", "possibly", "probably", "perhaps", "likely", "unlikely", "unclear", "unknown",
                     "uncertain", "may", "might", "could", "some", "several", "various", "approximately", "about",
                     "around", "roughly", "estimated", "believed", "suggests", "however", "although", "though"})
_NEGATIONS = frozenset({"not", "no", "never", "nor", "none", "neither", "nothing", "cannot", "cant", "dont", "doesnt",
                        "didnt", "isnt", "wasnt", "werent", "arent", "wont", "wouldnt", "couldnt", "hasnt",
                        "havent", "hadnt", "without"})
_UNSURE = ("not mentioned", "not specified", "not provided", "no information", "not known", "unknown", "not clear",
           "unclear", "does not", "do not know", "don't know", "cannot", "can't", "not possible", "no specific",
           "not stated", "no single", "not given")
_TITLES = frozenset(stem(t) for t in """mr mrs ms miss dr doctor sir dame lord lady king queen prince princess emperor
empress pope saint president vice governor general major colonel captain lieutenant admiral commander sergeant
marshal field brigadier bishop archbishop cardinal reverend father professor prof chief senator judge justice duke
earl count baron""".split())
_GOLD_ALT_RE = re.compile(r"[()\[\];/]|\bor\b")
_ALT_SPLIT_RE = re.compile(r",|;|/|\bor\b|\band\b|\bversus\b|\bvs\b")
_QUESTION_TYPES = (("how many", "how much"), ("when", "what year", "which year", "what date"), ("who", "whom", "whose"),
                   ("where",), ("why",), ("how",), ("which",), ("what",))
_QUESTION_TYPE_RES = tuple(re.compile(r"\b(?:" + "|".join(keys) + r")\b") for keys in _QUESTION_TYPES)


def answer_parts(prediction: str) -> tuple[str, str, int, str, str, bool]:
    """Views of a prediction: (answer text, its first paragraph, number of non-empty lines, first claim, first
    sentence of the claim, whether a run-on block was cut off).

    The answer text is the stripped prediction up to where the model starts a new ``Q:``/``Question:``/``Answer:``
    /... block of its own or echoes a system prompt (GPT-4.1 mostly judges the answer before such a run-on). The first
    claim is the first non-empty line without a leading list marker, joined with the next line when it only introduces
    it (ends with ":"): GPT-4.1 tends to judge the first answer line.
    """
    text = prediction.strip()
    m = _CUT_RE.search(text)
    if m:
        text = text[:m.start()].strip()
    paragraph = re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    claim = _LIST_MARK_RE.sub("", lines[0]) if lines else ""
    if claim.endswith(":") and len(lines) > 1:
        claim = claim + " " + _LIST_MARK_RE.sub("", lines[1])
    sentence = _SENT_RE.split(claim, maxsplit=1)[0] if claim else ""
    return text, paragraph, len(lines), claim, sentence, m is not None


def _find_run(hay: Sequence[str], needle: Sequence[str]) -> int:
    """Start of the first contiguous occurrence of `needle` in `hay`, or -1."""
    n = len(needle)
    if n == 0 or n > len(hay):
        return -1
    first = needle[0]
    for i in range(len(hay) - n + 1):
        if hay[i] == first and list(hay[i:i + n]) == list(needle):
            return i
    return -1


def _longest_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous token run shared by `a` and `b`."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                if cur[j + 1] > best:
                    best = cur[j + 1]
        prev = cur
    return best


def _trigrams(s: str) -> set[str]:
    s = f" {s} "
    return {s[i:i + 3] for i in range(len(s) - 2)}


def _trigram_containment(gold_trigrams: set[str], text: str) -> float:
    """Fraction of the gold's character trigrams that occur in `text` (both normalised)."""
    if not gold_trigrams:
        return 0.0
    padded = f" {text} "
    return sum(t in padded for t in gold_trigrams) / len(gold_trigrams)


def _initials(tokens: Sequence[str]) -> str:
    """First letters of the alphabetic non-stopword tokens, in order: a substring of length n is the acronym of n
    consecutive words ("alternating current" -> "ac", "department of defense" -> "dd")."""
    return "".join(t[0] for t in tokens if t[0].isalpha() and t not in STOPWORDS)


def _ratio(num: float, den: float, empty: float = -1.0) -> float:
    return num / den if den else empty


class _View:
    """One tokenised view of a prediction: raw tokens, canonical stems and their content set."""

    __slots__ = ("raw", "stems", "content")

    def __init__(self, text: str):
        self.raw = tokenize(text)
        self.stems = [stem(t) for t in canonical_tokens(self.raw)]
        content = {t for t in self.stems if t not in STOPWORDS}
        self.content = content or set(self.stems)


def extract_features(question: str, gold: str, prediction: str) -> list[float]:
    """The offline grader's feature vector for one row, in the order of ``FEATURE_NAMES``."""
    return list(_feature_dict(question, gold, prediction).values())


def _feature_dict(question: str, gold: str, prediction: str) -> dict[str, float]:
    question = strip_topic(question)
    text, paragraph, n_lines, claim, sentence, cut = answer_parts(prediction)
    q, g = _View(question), _View(gold)
    built: dict[str, _View] = {}  # the views are often the same text (one-line answers): tokenise each text once
    views = {name: built.get(t) or built.setdefault(t, _View(t))
             for name, t in (("full", text), ("para", paragraph), ("claim", claim), ("sent", sentence))}
    full, cl = views["full"], views["claim"]
    q_content = {t for t in q.stems if t not in STOPWORDS}
    g_set = g.content
    g_novel = g_set - q_content
    f: dict[str, float] = {}

    # --- containment
    ng, nf, nc = normalize_answer(gold), normalize_answer(text), normalize_answer(claim)
    f["sub_squad_full"] = float(bool(ng) and ng in nf)
    f["sub_squad_claim"] = float(bool(ng) and ng in nc)
    for name, v in views.items():
        f["seq_" + name] = float(_find_run(v.stems, g.stems) >= 0)
    f["pred_in_gold"] = float(bool(nc) and nc in ng)
    f["exact"] = float(bool(nc) and nc == ng)
    claim_novel = cl.content - q_content
    f["claim_novel_in_gold"] = float(bool(claim_novel) and claim_novel <= g_set)
    g_head = next((t for t in reversed(g.stems) if t not in STOPWORDS), "")
    f["claim_part_with_head"] = float(bool(claim_novel) and claim_novel <= g_set and g_head in claim_novel
                                      and _find_run(cl.stems, g.stems) < 0)

    # --- token overlap on each view
    for name, v in views.items():
        hit = len(g_set & v.content)
        r = _ratio(hit, len(g_set), 0.0)
        p = _ratio(hit, len(v.content), 0.0)
        f["recall_" + name] = r
        f["precision_" + name] = p
        f["f1_" + name] = 2 * r * p / (r + p) if hit else 0.0
        f["novel_recall_" + name] = _ratio(len(g_novel & v.content), len(g_novel))
        novel = v.content - q_content
        f["pred_novel_n_" + name] = float(len(novel))
        f["pred_novel_precision_" + name] = _ratio(len(novel & g_set), len(novel))
        f["q_overlap_" + name] = _ratio(len(v.content & q_content), len(v.content), 0.0)
    for name in ("full", "claim"):
        v = views[name]
        prefixes = {t[:5] for t in v.content if len(t) >= 5}
        fuzzy = sum(1 for t in g_set if t in v.content or (len(t) >= 5 and t[:5] in prefixes))
        f["fuzzy_recall_" + name] = _ratio(fuzzy, len(g_set), 0.0)
        weight = sum(len(t) for t in g_set)
        f["weighted_recall_" + name] = _ratio(sum(len(t) for t in g_set & v.content), weight, 0.0)
        f["longest_run_" + name] = _ratio(_longest_run(g.stems, v.stems), len(g.stems), 0.0)
        g_bi = set(zip(g.stems, g.stems[1:]))
        f["bigram_recall_" + name] = _ratio(len(g_bi & set(zip(v.stems, v.stems[1:]))), len(g_bi))
    g_words = [t for t in g.raw if t[0].isalpha() and t not in STOPWORDS]
    g_acronym = "".join(w[0] for w in g_words) if len(g_words) >= 2 else ""
    initials = _initials(full.raw)
    f["acronym"] = float((bool(g_acronym) and g_acronym in set(full.raw))
                         or any(t.isalpha() and 2 <= len(t) <= 5 and t in initials for t in g.raw))
    # gold answers that offer alternatives or an expansion: "savanna or desert", "Human Immunodeficiency Virus (HIV)"
    pieces = [p for p in _GOLD_ALT_RE.split(gold) if p.strip()]
    best = 0.0
    if len(pieces) > 1:
        for piece in pieces:
            ps = {stem(t) for t in canonical_tokens(tokenize(piece))} - STOPWORDS
            if ps:
                best = max(best, len(ps & cl.content) / len(ps))
    f["gold_alternative_recall_claim"] = best if len(pieces) > 1 else -1.0
    f["n_gold_novel"] = float(len(g_novel))
    f["gold_in_question"] = _ratio(len(g_set & q_content), len(g_set), 0.0)

    # --- numbers, years, months
    g_num, q_num = _numbers(g.stems), _numbers(q.stems)
    f_num, c_num, s_num = _numbers(full.stems), _numbers(cl.stems), _numbers(views["sent"].stems)
    f["gold_numbers"] = float(len(g_num))
    f["num_recall_full"] = _ratio(len(g_num & f_num), len(g_num))
    f["num_recall_claim"] = _ratio(len(g_num & c_num), len(g_num))
    f["num_recall_sent"] = _ratio(len(g_num & s_num), len(g_num))
    f["num_extra_claim"] = float(len(c_num - g_num)) if g_num else -1.0
    f["num_alien_claim"] = float(len(c_num - g_num - q_num))
    f["num_close_claim"] = float(any(abs(a - b) <= 0.15 * max(abs(a), 1e-9) for a in g_num for b in c_num)) \
        if g_num else -1.0
    f["num_n_claim"] = float(len(c_num))
    f["question_num_recall_claim"] = _ratio(len(q_num & c_num), len(q_num))
    g_years = _years(g_num)
    f["year_recall_full"] = _ratio(len(g_years & f_num), len(g_years))
    f["year_recall_claim"] = _ratio(len(g_years & c_num), len(g_years))
    f["year_extra_claim"] = float(len(_years(c_num) - g_years)) if g_years else -1.0
    f["years_equal_claim"] = float(len(g_years) if g_years == _years(c_num) else 0) if g_years else -1.0
    g_months = _MONTHS.intersection(g.raw)
    f["month_recall_claim"] = _ratio(len(g_months.intersection(cl.raw)), len(g_months))
    f["gold_is_number"] = float(bool(g.raw) and all(t[0].isdigit() or t in _UNITS or t in _SCALES
                                                    or t in STOPWORDS for t in g.raw))
    f["gold_is_year"] = float(len(g.raw) == 1 and bool(g_years))

    # --- names
    g_caps = set(tokenize(" ".join(_CAP_RE.findall(fold(gold))))) - STOPWORDS
    claim_raw, full_raw = set(cl.raw), set(full.raw)
    f["name_recall_claim"] = _ratio(len(g_caps & claim_raw), len(g_caps))
    f["name_recall_full"] = _ratio(len(g_caps & full_raw), len(g_caps))
    g_content_raw = [t for t in g.raw if t not in STOPWORDS]
    f["gold_last_in_claim"] = float(g_content_raw[-1] in claim_raw) if g_content_raw else -1.0
    f["gold_first_in_claim"] = float(g_content_raw[0] in claim_raw) if g_content_raw else -1.0
    q_caps = set(tokenize(" ".join(_CAP_RE.findall(fold(question))[1:]))) - STOPWORDS
    c_caps = set(tokenize(" ".join(_CAP_RE.findall(fold(claim))[1:]))) - STOPWORDS
    alien = c_caps - q_caps - g_caps
    f["question_name_recall_claim"] = _ratio(len(q_caps & claim_raw), len(q_caps))
    f["alien_names_claim"] = float(len(alien))
    f["alien_names_frac_claim"] = _ratio(len(alien), len(c_caps))
    core = [t for t in g.stems if t not in STOPWORDS and t not in _TITLES]
    f["gold_core_in_claim"] = float(_find_run(cl.stems, core) >= 0) if core and len(core) < len(g.stems) else -1.0
    alternatives = 0
    for seg in _ALT_SPLIT_RE.split(fold(sentence).lower()):
        seg_stems = {stem(t) for t in canonical_tokens(tokenize(seg))} - STOPWORDS
        if seg_stems - q_content and not seg_stems & g_set:
            alternatives += 1
    f["alternatives_sent"] = float(alternatives)
    head = [t for t in cl.stems if t not in STOPWORDS and t not in q_content][:3]
    f["head_in_gold"] = _ratio(sum(t in g_set for t in head), len(head))
    f["head1_in_gold"] = float(head[0] in g_set) if head else -1.0

    # --- shape
    f["len_gold"] = float(len(g.raw))
    f["len_full"] = float(len(full.raw))
    f["len_claim"] = float(len(cl.raw))
    f["len_sent"] = float(len(views["sent"].raw))
    f["n_lines"] = float(n_lines)
    f["run_on_cut"] = float(cut)
    f["para_frac"] = _ratio(len(views["para"].raw), len(full.raw), 0.0)
    f["n_sentences"] = float(len(_SENT_RE.split(text))) if text else 0.0
    f["is_list"] = float(bool(_LIST_LINE_RE.search(text)))
    f["claim_has_colon"] = float(":" in claim)
    f["claim_is_question"] = float(claim.rstrip().endswith("?"))
    f["starts_yes_no"] = float(bool(cl.raw) and cl.raw[0] in ("yes", "no"))

    # --- hedging, negation, alternatives
    sent_raw = views["sent"].raw
    f["hedges_sent"] = float(sum(t in _HEDGES for t in sent_raw))
    f["hedges_claim"] = float(sum(t in _HEDGES for t in cl.raw))
    f["or_claim"] = float(cl.raw.count("or"))
    f["and_claim"] = float(cl.raw.count("and"))
    f["commas_claim"] = float(claim.count(","))
    f["negations_sent"] = float(sum(t in _NEGATIONS for t in sent_raw))
    f["negations_claim"] = float(sum(t in _NEGATIONS for t in cl.raw))
    low = fold(text).lower()
    f["unsure_phrases"] = float(sum(u in low for u in _UNSURE))

    # --- where the gold first appears
    pos = _find_run(full.stems, g.stems)
    if pos >= 0:
        f["match_pos"] = pos / len(full.stems)
        f["match_abs"] = float(pos)
        f["negation_before_match"] = float(any(t in _NEGATIONS for t in full.stems[max(0, pos - 5):pos]))
        end = pos + len(g.stems)
        f["negation_after_match"] = float(any(t in _NEGATIONS for t in full.stems[end:end + 4]))
        f["or_near_match"] = float("or" in full.stems[max(0, pos - 3):pos + len(g.stems) + 3])
    else:
        f["match_pos"], f["match_abs"] = 1.5, -1.0
        f["negation_before_match"] = f["negation_after_match"] = f["or_near_match"] = -1.0
    if ng and ng in nf:
        sentences = _SENT_RE.split(text)
        f["match_sentence"] = float(next((i for i, s in enumerate(sentences) if ng in normalize_answer(s)),
                                         len(sentences)))
    else:
        f["match_sentence"] = -1.0

    # --- characters
    g_tri = _trigrams(ng)
    f["trigram_claim"] = _trigram_containment(g_tri, nc)
    f["trigram_full"] = _trigram_containment(g_tri, nf)

    # --- question type (one-hot) and the gold's look
    q_low = fold(question).lower()
    qtype = next((i for i, rx in enumerate(_QUESTION_TYPE_RES) if rx.search(q_low)), len(_QUESTION_TYPES))
    for i in range(len(_QUESTION_TYPES) + 1):
        f[f"qtype_{i}"] = float(qtype == i)
    f["gold_capitalised"] = float(gold[:1].isupper())
    return f


FEATURE_NAMES: tuple[str, ...] = tuple(_feature_dict("Who?", "Ann", "Ann."))


def feature_matrix(questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float64 features of N rows."""
    X = np.empty((len(questions), len(FEATURE_NAMES)), np.float64)
    for i, (q, g, p) in enumerate(zip(questions, golds, predictions)):
        X[i] = extract_features(q, g, p)
    return X


# ============================================================================================== tree ensemble

def _bin_edges(X: np.ndarray, max_bins: int) -> list[np.ndarray]:
    """Candidate split points per feature: midpoints between distinct values, or between quantiles when a feature
    has more than `max_bins` distinct values."""
    edges = []
    for j in range(X.shape[1]):
        values = np.unique(X[:, j])
        if len(values) > max_bins:
            values = np.unique(np.quantile(X[:, j], np.linspace(0.0, 1.0, max_bins + 1)))
        edges.append((values[:-1] + values[1:]) / 2.0)
    return edges


def fit_trees(X: np.ndarray, y: np.ndarray, n_trees: int = 500, depth: int = 3, learning_rate: float = 0.05,
              l2: float = 1.0, min_hessian: float = 1.0, max_bins: int = 64) -> dict[str, Any]:
    """Gradient-boosted regression trees for the logistic loss (Newton steps, histogram split search), numpy only.

    Every tree is a complete binary tree of `depth` levels stored level by level: internal node k sends a row to
    child 2k+1 when ``x[feature[k]] <= threshold[k]`` and to 2k+2 otherwise; a node that found no useful split has
    threshold +inf (everything goes left). Deterministic: no sampling, ties go to the lowest feature/bin index.
    """
    n, n_features = X.shape
    edges = _bin_edges(X, max_bins)
    bins = np.empty(X.shape, np.int64)
    for j, e in enumerate(edges):
        bins[:, j] = np.searchsorted(e, X[:, j], side="left")  # bin b <=> x <= e[b] and x > e[b-1]
    n_bins = max(len(e) for e in edges) + 1
    target = y.astype(np.float64)
    prior = float(np.clip(target.mean(), 1e-6, 1 - 1e-6))
    base = math.log(prior / (1 - prior))
    margin = np.full(n, base)
    n_inner, n_leaves = 2 ** depth - 1, 2 ** depth
    features = np.zeros((n_trees, n_inner), np.int64)
    thresholds = np.full((n_trees, n_inner), np.inf)
    leaves = np.zeros((n_trees, n_leaves))
    rows = np.arange(n)
    for t in range(n_trees):
        p = 1.0 / (1.0 + np.exp(-margin))
        grad, hess = p - target, p * (1.0 - p)
        node = np.zeros(n, np.int64)
        for level in range(depth):
            width, first = 2 ** level, 2 ** level - 1
            local = node - first
            G = np.bincount(local, grad, width)
            H = np.bincount(local, hess, width)
            parent = G ** 2 / (H + l2)
            best_gain, best_feature, best_bin = np.zeros(width), np.zeros(width, np.int64), np.full(width, -1)
            for j in range(n_features):
                if len(edges[j]) == 0:
                    continue
                idx = local * n_bins + bins[:, j]
                GL = np.cumsum(np.bincount(idx, grad, width * n_bins).reshape(width, n_bins), 1)[:, :len(edges[j])]
                HL = np.cumsum(np.bincount(idx, hess, width * n_bins).reshape(width, n_bins), 1)[:, :len(edges[j])]
                GR, HR = G[:, None] - GL, H[:, None] - HL
                gain = GL ** 2 / (HL + l2) + GR ** 2 / (HR + l2) - parent[:, None]
                gain[(HL < min_hessian) | (HR < min_hessian)] = 0.0
                k = gain.argmax(1)
                g_best = gain[np.arange(width), k]
                better = g_best > best_gain + 1e-12
                best_gain[better], best_feature[better], best_bin[better] = g_best[better], j, k[better]
            split = best_bin >= 0
            features[t, first:first + width] = np.where(split, best_feature, 0)
            thresholds[t, first:first + width] = [edges[f][b] if s else np.inf
                                                  for f, b, s in zip(best_feature, best_bin, split)]
            cut = np.where(split, best_bin, np.iinfo(np.int64).max)[local]
            node = 2 * node + 1 + (bins[rows, features[t, node]] > cut)
        leaf = node - n_inner
        G = np.bincount(leaf, grad, n_leaves)
        H = np.bincount(leaf, hess, n_leaves)
        leaves[t] = -learning_rate * G / (H + l2)
        margin += leaves[t][leaf]
    return {"base_margin": base, "depth": depth, "features": features, "thresholds": thresholds, "leaves": leaves}


def tree_margins(model: Mapping[str, Any], X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Log-odds of "correct" for each row of X under a `fit_trees` ensemble (all trees evaluated together)."""
    features, thresholds, leaves = model["features"], model["thresholds"], model["leaves"]
    n_trees, depth = features.shape[0], int(model["depth"])
    trees = np.arange(n_trees)[None, :]
    out = np.empty(X.shape[0])
    for s in range(0, X.shape[0], chunk):
        x = X[s:s + chunk]
        node = np.zeros((x.shape[0], n_trees), np.int64)
        for _ in range(depth):
            go_right = np.take_along_axis(x, features[trees, node], 1) > thresholds[trees, node]
            node = 2 * node + 1 + go_right
        out[s:s + chunk] = model["base_margin"] + leaves[trees, node - (2 ** depth - 1)].sum(1)
    return out


def _model_to_json(model: Mapping[str, Any]) -> dict[str, Any]:
    return {"base_margin": float(model["base_margin"]), "depth": int(model["depth"]),
            "features": model["features"].tolist(),
            "thresholds": [[None if math.isinf(v) else float(v) for v in row] for row in model["thresholds"]],
            "leaves": [[float(f"{v:.9g}") for v in row] for row in model["leaves"]]}


def _model_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
    return {"base_margin": float(d["base_margin"]), "depth": int(d["depth"]),
            "features": np.asarray(d["features"], np.int64),
            "thresholds": np.asarray([[np.inf if v is None else v for v in row] for row in d["thresholds"]],
                                     np.float64),
            "leaves": np.asarray(d["leaves"], np.float64)}


# ============================================================================================== graders

class Grader(abc.ABC):
    """Common interface: ``grade(questions, golds, predictions) -> list[bool]``; empty predictions are False."""

    name = "grader"

    @abc.abstractmethod
    def grade(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        """One verdict per row."""

    def __call__(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        return self.grade(questions, golds, predictions)

    def grade_one(self, question: str, gold: str, prediction: str) -> bool:
        """Grade a single row."""
        return self.grade([question], [gold], [prediction])[0]


def _check_rows(questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[int]:
    """Indices of the rows that need grading (non-empty prediction); checks that the three lists line up."""
    if not len(questions) == len(golds) == len(predictions):
        raise ValueError(f"questions, golds and predictions differ in length: "
                         f"{len(questions)}, {len(golds)}, {len(predictions)}")
    return [i for i, p in enumerate(predictions) if p is not None and p.strip()]


class OfflineGrader(Grader):
    """The calibrated feature + tree-ensemble grader (see the module docstring). CPU only, no network."""

    name = "offline"

    def __init__(self, params_path: str | os.PathLike | None = None):
        path = Path(params_path) if params_path is not None else DEFAULT_PARAMS_PATH
        if not path.is_file():
            raise FileNotFoundError(f"offline grader parameters not found: {path} (regenerate them with "
                                    f"`python -m seal_jax.knowledge.grader --fit VERDICTS.jsonl --out {path}`)")
        with open(path, encoding="utf-8") as fh:
            params = json.load(fh)
        if params.get("format") != PARAMS_FORMAT:
            raise ValueError(f"{path}: not offline-grader parameters (format {params.get('format')!r}, "
                             f"expected {PARAMS_FORMAT!r})")
        if tuple(params["feature_names"]) != FEATURE_NAMES:
            raise ValueError(f"{path} was fit on a different feature set than this code computes; regenerate it with "
                             f"`python -m seal_jax.knowledge.grader --fit VERDICTS.jsonl --out {path}`")
        self.path = path
        self.params = params
        self.model = _model_from_json(params["model"])
        self.threshold = float(params.get("threshold", 0.0))

    def margins(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
        """Log-odds that GPT-4.1 would say "yes", per row (-inf for empty predictions)."""
        todo = _check_rows(questions, golds, predictions)
        out = np.full(len(predictions), -np.inf)
        if todo:
            X = feature_matrix([questions[i] for i in todo], [golds[i] for i in todo], [predictions[i] for i in todo])
            out[todo] = tree_margins(self.model, X)
        return out

    def probabilities(self, questions: Sequence[str], golds: Sequence[str],
                      predictions: Sequence[str]) -> np.ndarray:
        """Estimated probability that GPT-4.1 would grade each row correct (0 for empty predictions)."""
        return 1.0 / (1.0 + np.exp(-self.margins(questions, golds, predictions)))

    def grade(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        return [bool(m > self.threshold) for m in self.margins(questions, golds, predictions)]


# ---------------------------------------------------------------------------------------------- LLM prompt

# Our own wording of the original SQUAD_GRADE_TEMPLATE's content and layout: an instruction paragraph (judge against
# the gold answer only, no outside knowledge; extra information is fine when the gold answer is fully conveyed and
# not contradicted; ignore style), then the Question / Gold answer / Student answer lines, then a yes/no request.
GRADE_TEMPLATE = (
    "You are checking a student's answer to a question. Decide whether it is correct using only the gold answer "
    "given below; do not bring in any knowledge of your own. The student may add further information, but the "
    "answer counts as correct only if it fully conveys the gold answer and says nothing that contradicts it. "
    "Ignore differences in style, wording and length.\n\n"
    "Question: {question}\n"
    "Gold answer: {gold}\n"
    "Student answer: {prediction}\n\n"
    "Does the student answer match the gold answer? Reply with yes or no."
)

_YES_RE = re.compile(r"\byes\b", re.IGNORECASE)
_NO_RE = re.compile(r"\bno\b", re.IGNORECASE)


def build_grade_prompt(question: str, gold: str, prediction: str, template: str = GRADE_TEMPLATE) -> str:
    """The judge prompt for one row (the prediction is stripped, as in the original). The template names the
    prediction {prediction} (ours) or {pred} (the original's SQUAD_GRADE_TEMPLATE, from `--prompts`)."""
    return template.format(question=question, gold=gold, prediction=prediction.strip(), pred=prediction.strip())


def parse_verdict(reply: str | None) -> bool:
    """The original's parsing: True iff the word "yes" occurs and the word "no" does not (case-insensitive, whole
    words), so "Yes." is True and "yes, but no" or "Not sure" are False (no reply is False)."""
    return bool(reply) and _YES_RE.search(reply) is not None and _NO_RE.search(reply) is None


class LLMJudge(Grader):
    """A local model as the judge: greedy, batched ``seal_jax.generate`` on ``GRADE_TEMPLATE`` prompts.

    tokenizer: any object with ``encode(text) -> list[int]`` and ``decode(ids) -> str`` (e.g.
    ``seal_jax.tokenizer.Tokenizer``). chat: wrap the prompt as one user turn with the tokenizer's chat template
    (``apply_chat_template``); None = do so when the tokenizer has a chat template (instruct models), otherwise the
    raw prompt is encoded. Prompts are sorted by length before batching so each batch holds similar lengths.
    generate_fn defaults to ``seal_jax.generate``; it is called as
    ``generate_fn(model, prompt_ids, max_new_tokens=..., temperature=0.0, stop_token_ids=...)``.
    """

    name = "llm"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, max_new_tokens: int = 8,
                 stop_token_ids: Sequence[int] | None = None, chat: bool | None = None,
                 template: str = GRADE_TEMPLATE, generate_fn: Callable[..., list[list[int]]] | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens, self.template = batch_size, max_new_tokens, template
        if stop_token_ids is None:
            stop_token_ids = getattr(tokenizer, "stop_token_ids", None)
        self.stop_token_ids = list(stop_token_ids) if stop_token_ids else None
        self.chat = _has_chat_template(tokenizer) if chat is None else chat
        if generate_fn is None:
            from seal_jax.generation import generate as generate_fn
        self.generate_fn = generate_fn

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of one judge prompt (chat-wrapped when `self.chat`)."""
        if self.chat:
            return list(self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                           add_generation_prompt=True))
        return list(self.tokenizer.encode(prompt))

    def replies(self, questions: Sequence[str], golds: Sequence[str],
                predictions: Sequence[str]) -> list[str | None]:
        """The judge's raw reply per row (None for empty predictions, which are not sent)."""
        todo = _check_rows(questions, golds, predictions)
        ids = [self.encode_prompt(build_grade_prompt(questions[i], golds[i], predictions[i], self.template))
               for i in todo]
        order = sorted(range(len(todo)), key=lambda k: len(ids[k]))
        out: list[str | None] = [None] * len(predictions)
        for s in range(0, len(order), self.batch_size):
            batch = order[s:s + self.batch_size]
            new = self.generate_fn(self.model, [ids[k] for k in batch], max_new_tokens=self.max_new_tokens,
                                   temperature=0.0, stop_token_ids=self.stop_token_ids)
            for k, toks in zip(batch, new):
                out[todo[k]] = self.tokenizer.decode(list(toks))
        return out

    def grade(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        return [parse_verdict(r) for r in self.replies(questions, golds, predictions)]


def _has_chat_template(tokenizer: Any) -> bool:
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        return False
    hf = getattr(tokenizer, "hf", tokenizer)
    return bool(getattr(hf, "chat_template", None))


class OpenAIGrader(Grader):
    """An OpenAI-compatible chat-completions endpoint as the judge (``urllib`` only).

    base_url: e.g. ``https://api.openai.com/v1`` or a local vLLM ``http://127.0.0.1:8000/v1`` (default:
    ``$OPENAI_BASE_URL``, else the OpenAI URL). api_key: sent as a Bearer token when given (default:
    ``$OPENAI_API_KEY``). model: default "gpt-4.1", the original's grader. temperature None leaves the endpoint's
    default, as the original did. Each request is tried `max_tries` times, waiting ``backoff_s * attempt`` seconds
    after a failed attempt; a row whose requests all fail is graded False (as the original), and counted in
    ``failed_requests``. `workers` requests run at once (the original sent them one by one).
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 temperature: float | None = None, max_tries: int = 3, backoff_s: float = 1.5,
                 timeout_s: float = 60.0, workers: int = 4, template: str = GRADE_TEMPLATE):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or "gpt-4.1"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.temperature, self.max_tries, self.backoff_s = temperature, max(1, max_tries), backoff_s
        self.timeout_s, self.workers, self.template = timeout_s, max(1, workers), template
        self.failed_requests = 0

    def ask(self, prompt: str) -> str | None:
        """The endpoint's reply to one prompt, or None when every try failed."""
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(1, self.max_tries + 1):
            try:
                req = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers,
                                             method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                content = reply["choices"][0]["message"]["content"]
                if isinstance(content, str):
                    return content
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
                pass
            if attempt < self.max_tries:
                time.sleep(self.backoff_s * attempt)
        self.failed_requests += 1
        return None

    def check(self) -> None:
        """Before any work: one request to the endpoint (one try); a one-line ``ValueError`` naming the URL when no
        reply comes (unreachable, refused, no key for the OpenAI URL), so that a run is not graded all-False."""
        if not self.api_key and "api.openai.com" in self.base_url:
            raise ValueError(f"the openai grader needs $OPENAI_API_KEY for {self.base_url} (or --openai-base-url for "
                             f"a local OpenAI-compatible endpoint)")
        tries, self.max_tries = self.max_tries, 1
        try:
            reply = self.ask("Reply with the word Yes.")
        finally:
            self.max_tries = tries
        if reply is None:
            self.failed_requests -= 1
            raise ValueError(f"the grader endpoint {self.base_url}/chat/completions (model {self.model}) gave no "
                             f"reply")

    def replies(self, questions: Sequence[str], golds: Sequence[str],
                predictions: Sequence[str]) -> list[str | None]:
        """The endpoint's raw reply per row (None for empty predictions and failed requests)."""
        todo = _check_rows(questions, golds, predictions)
        prompts = [build_grade_prompt(questions[i], golds[i], predictions[i], self.template) for i in todo]
        out: list[str | None] = [None] * len(predictions)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for i, reply in zip(todo, pool.map(self.ask, prompts)):
                out[i] = reply
        return out

    def grade(self, questions: Sequence[str], golds: Sequence[str], predictions: Sequence[str]) -> list[bool]:
        return [parse_verdict(r) for r in self.replies(questions, golds, predictions)]


GRADERS = {"offline": OfflineGrader, "llm": LLMJudge, "openai": OpenAIGrader}


def make_grader(name: str = "offline", **kwargs: Any) -> Grader:
    """A grader by name: "offline" (params_path=...), "llm" (model=, tokenizer=, batch_size=, ...) or "openai"
    (base_url=, model=, api_key=, ...). See the classes for their arguments."""
    try:
        cls = GRADERS[name]
    except KeyError:
        raise ValueError(f"unknown grader {name!r}; choose one of {', '.join(GRADERS)}") from None
    return cls(**kwargs)


# ============================================================================================== calibration

VERDICT_FIELDS = ("question", "gold", "prediction", "gpt41_correct")
DEFAULT_HYPERPARAMETERS = {"n_trees": 500, "depth": 3, "learning_rate": 0.05, "l2": 1.0, "min_hessian": 1.0,
                           "max_bins": 64}


def load_verdicts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows ``{question, gold, prediction, gpt41_correct}`` of a verdicts JSONL file (blank lines skipped; a bad line
    raises a one-line ``ValueError``)."""
    return read_jsonl_strict(path, {k: object for k in VERDICT_FIELDS})


def agreement(grader: Grader, rows: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of `rows` on which `grader` agrees with their ``gpt41_correct`` verdict."""
    if not rows:
        return float("nan")
    got = grader.grade([r["question"] for r in rows], [r["gold"] for r in rows], [r["prediction"] for r in rows])
    return float(np.mean([g == bool(r["gpt41_correct"]) for g, r in zip(got, rows)]))


def fit_offline_grader(verdicts_path: str | os.PathLike, out_path: str | os.PathLike = DEFAULT_PARAMS_PATH,
                       heldout_percent: int = HELDOUT_PERCENT, log: Callable[[str], None] = print,
                       **hyperparameters: Any) -> dict[str, float]:
    """Fit the offline grader on the TRAIN part of the by-question split of `verdicts_path`, write its parameters
    to `out_path`, and return the agreement (of the written parameters) on train, held-out and all rows.

    Rows with an empty prediction are left out of the fit (they are False by rule). Deterministic: the same file
    gives the same parameters.
    """
    hp = dict(DEFAULT_HYPERPARAMETERS)
    unknown = set(hyperparameters) - set(hp)
    if unknown:
        raise TypeError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
    hp.update(hyperparameters)
    raw = Path(verdicts_path).read_bytes()
    rows = load_verdicts(verdicts_path)
    held = [is_held_out(r["question"], heldout_percent) for r in rows]
    train = [r for r, h in zip(rows, held) if not h]
    fit_rows = [r for r in train if r["prediction"].strip()]
    log(f"{len(rows)} rows, {len({split_key(r['question']) for r in rows})} questions; train part: {len(train)} rows "
        f"({len(fit_rows)} with a prediction) over {len({split_key(r['question']) for r in train})} questions")
    t0 = time.perf_counter()
    X = feature_matrix([r["question"] for r in fit_rows], [r["gold"] for r in fit_rows],
                       [r["prediction"] for r in fit_rows])
    y = np.asarray([bool(r["gpt41_correct"]) for r in fit_rows])
    log(f"features: {X.shape[1]} per row, {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    model = fit_trees(X, y, **hp)
    log(f"fit {hp['n_trees']} trees of depth {hp['depth']}: {time.perf_counter() - t0:.1f}s")
    params = {
        "format": PARAMS_FORMAT,
        "description": "Offline SQuAD answer grader calibrated on GPT-4.1 verdicts; see seal_jax/knowledge/grader.py",
        "split": {"rule": "held out iff int(sha1(split_key(question)).hexdigest()[:8], 16) % 100 < heldout_percent",
                  "heldout_percent": heldout_percent},
        "training": {"source": Path(verdicts_path).name, "source_sha1": hashlib.sha1(raw).hexdigest(),
                     "rows": len(fit_rows), "questions": len({split_key(r["question"]) for r in fit_rows}),
                     "positives": int(y.sum()), "hyperparameters": hp},
        "feature_names": list(FEATURE_NAMES),
        "threshold": 0.0,
        "model": _model_to_json(model),
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, separators=(",", ":")) + "\n", encoding="utf-8")
    grader = OfflineGrader(out)
    report = {"train": agreement(grader, train), "heldout": agreement(grader, [r for r, h in zip(rows, held) if h]),
              "all": agreement(grader, rows)}
    log(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB); agreement with GPT-4.1: train {report['train']:.4f}, "
        f"held-out {report['heldout']:.4f} ({sum(held)} rows), all {report['all']:.4f}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m seal_jax.knowledge.grader",
                                 description="Fit the offline grader's parameters on a GPT-4.1 verdicts JSONL file "
                                             "(train part of the by-question split only).")
    ap.add_argument("--fit", required=True, metavar="VERDICTS.jsonl",
                    help="rows {question, gold, prediction, gpt41_correct}")
    ap.add_argument("--out", default=str(DEFAULT_PARAMS_PATH), help="where to write the parameters JSON")
    ap.add_argument("--heldout-percent", type=int, default=HELDOUT_PERCENT)
    ap.add_argument("--trees", type=int, default=DEFAULT_HYPERPARAMETERS["n_trees"])
    ap.add_argument("--depth", type=int, default=DEFAULT_HYPERPARAMETERS["depth"])
    ap.add_argument("--learning-rate", type=float, default=DEFAULT_HYPERPARAMETERS["learning_rate"])
    ap.add_argument("--l2", type=float, default=DEFAULT_HYPERPARAMETERS["l2"])
    ap.add_argument("--min-hessian", type=float, default=DEFAULT_HYPERPARAMETERS["min_hessian"])
    ap.add_argument("--max-bins", type=int, default=DEFAULT_HYPERPARAMETERS["max_bins"])
    args = ap.parse_args(argv)
    try:
        fit_offline_grader(args.fit, args.out, heldout_percent=args.heldout_percent, n_trees=args.trees,
                           depth=args.depth, learning_rate=args.learning_rate, l2=args.l2,
                           min_hessian=args.min_hessian, max_bins=args.max_bins)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
