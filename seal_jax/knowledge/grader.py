"""Graders for SQuAD-style answers: (question, gold answer, prediction) -> correct or not.

The original SEAL grades every answer with GPT-4.1 (spec S2 "Grading"): one API call per answer, a prompt that
judges the student answer against the gold answer only, and ``True`` iff the reply contains the word "yes" and not
the word "no". An empty prediction is ``False`` without a call. Three graders share that contract here:

``OfflineGrader`` (``make_grader("offline")``)
    A gradient-boosted tree ensemble over hand-crafted lexical features, calibrated on the stored GPT-4.1 verdicts
    (``squad_gpt41_verdicts_dev.jsonl``). It needs no accelerator, network or model and grades tens of thousands of
    rows in seconds on one CPU core (numpy only). The parameters ship as ``offline_grader.json`` next to this file
    and are regenerated with::

        python -m seal_jax.knowledge.grader --fit /path/to/squad_gpt41_verdicts_dev.jsonl \\
            --out seal_jax/knowledge/offline_grader.json

    Protocol (``fit_offline_grader``). The rows are divided BY QUESTION into three parts: a question's bucket is
    ``int(sha1(split_key(question))[:8], 16) % 100`` (``split_key`` = the SQuAD-normalised question with any
    ``Topic: ...`` line removed) and buckets 0-59 are "fit", 60-79 "select", 80-99 "report" (``SPLITS``), so no
    question is in two parts. "fit" and "select" together are the development questions (``DEVELOPMENT_PARTS``):
    each entry of ``HYPERPARAMETER_GRID`` (a scikit-learn ``HistGradientBoostingClassifier``, no early stopping,
    random_state 0) is scored by 5-fold cross-validation over them, grouped by question (a question's fold is its
    bucket % 5, ``CV_FOLDS``), at every decision threshold on the log-odds (``THRESHOLDS``); the entry and threshold
    with the best out-of-fold agreement are kept and that entry is refit on all the development rows. The learning
    curve is flat (cross-validated agreement 0.889 whether trained on 40% or 72% of the rows), so "select" no longer
    needs to be held out of training; cross-validation chooses as well from more questions than the old 131 of
    "select" alone. "report" is used for nothing but the final measurement. The run prints and stores in the
    parameters file (``calibration``) the out-of-fold agreement on the development questions, the agreement on
    "report" (and, in-sample, on "fit" and "select"), for the written grader and the plain gold-substring rule, with
    95% intervals (percentile bootstrap over questions, 2000 resamples, seed 0, as a question's rows are not
    independent; Wilson alongside), and the out-of-fold agreement per answer style. Rows with an empty prediction
    are False by rule and left out of the fit. Deterministic: the same file and scikit-learn version give the same
    parameters. scikit-learn is needed for ``--fit`` only: the fitted trees are exported as plain JSON data
    (``export_trees``: per node the split feature, threshold, children, missing-value side and leaf value) and
    graded with numpy (``tree_margins``, equal to the classifier's ``decision_function``), so loading the grader runs
    no pickled code and does not depend on the scikit-learn version. Measured agreement with GPT-4.1 and the
    comparison with the earlier graders: benchmarks/RESULTS.md.

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
character-trigram containment; the question type; lengths and line counts. Added with the cross-validated protocol:
soft (shared-prefix) recall of the gold words ("Greece" for "Greek"); decades and centuries ("1649" is in
"the 1640s", "955" in "the 10th century"); how many of a listed gold's items are covered ("IC, microchips or simply
chips"); whether a number lies in the interval the gold states ("36%" for "under 40%", "over 200" for "hundreds");
and stems that map irregular forms to their base ("fled" = "flee") and strip -ism/-ist/-ity/-ian.
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
    "CV_FOLDS",
    "DEFAULT_PARAMS_PATH",
    "DEVELOPMENT_PARTS",
    "FEATURE_NAMES",
    "SPLITS",
    "GRADE_TEMPLATE",
    "LLMJudge",
    "OfflineGrader",
    "OpenAIGrader",
    "build_grade_prompt",
    "extract_features",
    "fit_offline_grader",
    "load_verdicts",
    "make_grader",
    "normalize_answer",
    "parse_verdict",
    "split_key",
    "split_of",
    "tokenize",
]

DEFAULT_PARAMS_PATH = Path(__file__).with_name("offline_grader.json")
PARAMS_FORMAT = "seal_jax.offline_grader/2"
# The by-question split of the verdicts: (name, first bucket, end bucket) over the buckets 0..99 of split_bucket.
SPLITS = (("fit", 0, 60), ("select", 60, 80), ("report", 80, 100))

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


def split_bucket(question: str) -> int:
    """The bucket (0..99) of `question` in the by-question split: ``int(sha1(split_key(question))[:8], 16) % 100``."""
    return int(hashlib.sha1(split_key(question).encode("utf-8")).hexdigest()[:8], 16) % 100


def split_of(question: str) -> str:
    """Which part of the by-question split `question` belongs to: "fit" (buckets 0-59) or "select" (60-79), the
    development questions (hyper-parameters and threshold chosen by cross-validation over both, the trees fit on
    both), or "report" (80-99, only measured)."""
    bucket = split_bucket(question)
    return next(name for name, lo, hi in SPLITS if lo <= bucket < hi)


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

_SUFFIXES = ("ational", "ations", "ation", "ments", "ment", "ings", "ing", "ions", "ion", "ness", "isms", "ism",
             "ists", "ist", "ities", "ity", "ians", "ian", "ies", "ied", "ers", "er", "ed", "es", "ly", "al", "s", "e",
             "y")
_STEMS: dict[str, str] = {}
# Irregular verb forms and plurals, stemmed as their base form ("fled" = "flee", "broken" = "break").
_IRREGULAR = {form: base for base, forms in (
    ("flee", "fled"), ("break", "broke broken"), ("build", "built"), ("win", "won"), ("lead", "led"),
    ("buy", "bought"), ("bring", "brought"), ("catch", "caught"), ("fight", "fought"), ("teach", "taught"),
    ("think", "thought"), ("sell", "sold"), ("tell", "told"), ("hold", "held"), ("begin", "began begun"),
    ("become", "became"), ("come", "came"), ("choose", "chose chosen"), ("drive", "drove driven"),
    ("fall", "fell fallen"), ("feel", "felt"), ("find", "found"), ("give", "gave given"), ("grow", "grew grown"),
    ("know", "knew known"), ("leave", "left"), ("lose", "lost"), ("make", "made"), ("meet", "met"), ("pay", "paid"),
    ("run", "ran"), ("rise", "rose risen"), ("say", "said"), ("send", "sent"), ("spend", "spent"),
    ("stand", "stood"), ("strike", "struck stricken"), ("take", "took taken"), ("write", "wrote written"),
    ("go", "went gone"), ("see", "saw seen"), ("speak", "spoke spoken"), ("steal", "stole stolen"),
    ("shoot", "shot"), ("sink", "sank sunk"), ("wear", "wore worn"), ("feed", "fed"), ("freeze", "froze frozen"),
    ("hide", "hid hidden"), ("mean", "meant"), ("ride", "rode ridden"), ("seek", "sought"),
    ("shake", "shook shaken"), ("slay", "slew slain"), ("sweep", "swept"), ("throw", "threw thrown"),
    ("understand", "understood"), ("withdraw", "withdrew withdrawn"), ("overthrow", "overthrew overthrown"),
    ("forget", "forgot forgotten"), ("deal", "dealt"), ("dig", "dug"), ("draw", "drew drawn"), ("eat", "ate eaten"),
    ("fly", "flew flown"), ("keep", "kept"), ("lend", "lent"), ("sing", "sang sung"), ("sleep", "slept"),
    ("stick", "stuck"), ("swim", "swam swum"), ("tear", "tore torn"), ("weep", "wept"), ("forbid", "forbade"),
    ("child", "children"), ("man", "men"), ("woman", "women"), ("mouse", "mice"), ("foot", "feet"),
    ("tooth", "teeth")) for form in forms.split()}


def stem(token: str) -> str:
    """A light suffix-stripping stem ("exploring"/"exploration" -> "explor", "Puritans"/"Puritanism" -> "puritan");
    irregular forms first become their base ("fled" -> "flee", "broken" -> "break"); numbers and short words are
    kept."""
    s = _STEMS.get(token)
    if s is None:
        s = base = _IRREGULAR.get(token, token)
        if not base[0].isdigit() and len(base) > 3:
            for suf in _SUFFIXES:
                if base.endswith(suf) and len(base) - len(suf) >= 3:
                    s = base[:-len(suf)]
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


_UPPER_WORDS = {"under", "below", "less", "fewer", "nearly", "almost", "most", "within"}
_LOWER_WORDS = {"over", "above", "more", "least", "exceeding", "excess", "beyond"}
_RANGE_WORDS = {"to", "and", "through"}
_PLURAL_SCALES = {"dozens": (24.0, 144.0), "hundreds": (200.0, 1000.0), "thousands": (2000.0, 10.0 ** 6),
                  "millions": (2e6, 1e9), "billions": (2e9, 1e12)}


def _number_bounds(canon: Sequence[str]) -> list[tuple[float, float]]:
    """The intervals a gold answer's numbers allow: "under 40" -> below 40, "over 150" -> above 150 (both strict),
    "20 to 25" -> [20, 25], "hundreds" -> [200, 1000]; empty when it states none of these ("20-25" is two numbers
    without a range word: not a range). `canon` are ``canonical_tokens`` (numbers already one token)."""
    out = []
    for i, t in enumerate(canon):
        if t in _PLURAL_SCALES:
            out.append(_PLURAL_SCALES[t])
        if not t[0].isdigit():
            continue
        try:
            v = float(t)
        except ValueError:
            continue
        before = canon[max(0, i - 2):i]
        if any(w in _UPPER_WORDS for w in before):  # strict: "$1.25" is not "less than $1.25"
            out.append((-math.inf, v - 1e-9 * max(1.0, abs(v))))
        elif any(w in _LOWER_WORDS for w in before):
            out.append((v + 1e-9 * max(1.0, abs(v)), math.inf))
        if i + 2 < len(canon) and canon[i + 1] in _RANGE_WORDS and canon[i + 2][0].isdigit():
            try:
                w = float(canon[i + 2])
            except ValueError:
                continue
            if v < w:
                out.append((v, w))
    return out


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


def _prefix_index(content: Iterable[str]) -> dict[str, list[str]]:
    """The alphabetic tokens of `content` of 4+ characters by their first 3 characters (candidates for _soft_match)."""
    index: dict[str, list[str]] = {}
    for t in content:
        if len(t) >= 4 and t[0].isalpha():
            index.setdefault(t[:3], []).append(t)
    return index


def _soft_match(token: str, index: Mapping[str, Sequence[str]]) -> float:
    """How well `token` is matched by a token of the index: 1 for the same token, else the longest shared prefix over
    the longer length when that is at least 0.6 ("palestin" / "palestinian" = 8/11), else 0."""
    best = 0.0
    for t in index.get(token[:3], ()):
        if t == token:
            return 1.0
        n = min(len(t), len(token))
        k = 3
        while k < n and t[k] == token[k]:
            k += 1
        best = max(best, k / max(len(t), len(token)))
    return best if best >= 0.6 else 0.0


_DECADE_RE = re.compile(r"\b(\d{2,3})0'?s\b")
_CENTURY_RE = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)[\s-]+century\b(\s*BC)?", re.IGNORECASE)
_CENTURY_WORDS = {w: v for w, v in _ORDINALS.items() if v <= 21}
_CENTURY_WORD_RE = re.compile(r"\b(" + "|".join(_CENTURY_WORDS) + r")[\s-]+century\b", re.IGNORECASE)


def _periods(text: str) -> set[tuple[int, int]]:
    """Decades and centuries named in `text` as [first, end) year ranges: "1640s" -> (1640, 1650), "10th century" and
    "tenth century" -> (900, 1000); BC centuries are left out."""
    out = {(int(m.group(1)) * 10, int(m.group(1)) * 10 + 10) for m in _DECADE_RE.finditer(text)}
    out.update(((int(m.group(1)) - 1) * 100, int(m.group(1)) * 100) for m in _CENTURY_RE.finditer(text)
               if not m.group(2))
    out.update(((_CENTURY_WORDS[m.group(1).lower()] - 1) * 100, _CENTURY_WORDS[m.group(1).lower()] * 100)
               for m in _CENTURY_WORD_RE.finditer(text))
    return out


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
    bounds = _number_bounds(canonical_tokens(g.raw))
    for name, nums in (("full", f_num), ("claim", c_num)):
        f["num_within_bounds_" + name] = float(any(lo <= v <= hi for lo, hi in bounds for v in nums)) \
            if bounds else -1.0
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

    # --- soft (prefix) token matches: "Greece" for "Greek", "storage" for "stores"
    g_alpha = [t for t in g_set if t[0].isalpha()]
    g_novel_alpha = [t for t in g_alpha if t in g_novel]
    for name in ("full", "claim"):
        content = views[name].content
        index = _prefix_index(content)
        sims = {t: 1.0 if t in content else _soft_match(t, index) for t in g_alpha}
        f["soft_recall_" + name] = _ratio(sum(sims.values()), len(g_alpha))
        f["soft_novel_recall_" + name] = _ratio(sum(sims[t] for t in g_novel_alpha), len(g_novel_alpha))

    # --- periods: a decade ("1640s") or century ("10th century") in the gold and years inside it in the answer
    g_periods = _periods(gold)
    for name in ("full", "claim"):
        nums = f_num if name == "full" else c_num
        f["period_in_" + name] = float(any(lo <= v < hi for lo, hi in g_periods for v in nums)
                                       or any(p in _periods(text if name == "full" else claim) for p in g_periods)) \
            if g_periods else -1.0
    c_periods = _periods(claim)
    f["claim_period_holds_gold_year"] = float(any(lo <= v < hi for lo, hi in c_periods for v in g_years)) \
        if g_years and c_periods else -1.0

    # --- a gold that lists several items ("IC, microchips or simply chips"): how many items the answer covers
    items = [it for it in (({stem(t) for t in canonical_tokens(tokenize(seg))} - STOPWORDS)
                           for seg in _ALT_SPLIT_RE.split(fold(gold).lower())) if it]
    f["gold_items"] = float(len(items))
    for name in ("full", "claim"):
        content = views[name].content
        f["gold_items_found_" + name] = _ratio(sum(2 * len(it & content) >= len(it) for it in items), len(items)) \
            if len(items) > 1 else -1.0

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

def export_trees(classifier: Any) -> dict[str, Any]:
    """A fitted scikit-learn ``HistGradientBoostingClassifier`` (binary, numerical features) as plain JSON data that
    ``tree_margins`` evaluates with numpy alone: the baseline log-odds and, per tree, its nodes' split feature,
    threshold (``x <= threshold`` goes left), children, where a missing value goes, and value (leaves only; they
    already include the learning rate). Reads the fitted ``_predictors`` / ``_baseline_prediction`` attributes."""
    trees = []
    for (predictor,) in classifier._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append({"feature": [0 if lf else int(f) for f, lf in zip(nodes["feature_idx"], leaf)],
                      "threshold": [None if lf else float(t) for t, lf in zip(nodes["num_threshold"], leaf)],
                      "left": [int(c) for c in nodes["left"]], "right": [int(c) for c in nodes["right"]],
                      "missing_left": [int(m) for m in nodes["missing_go_to_left"]],
                      "value": [float(f"{v:.9g}") if lf else 0.0 for v, lf in zip(nodes["value"], leaf)],
                      "leaf": [int(lf) for lf in leaf]})
    depth = max((int(p[0].nodes["depth"].max()) for p in classifier._predictors), default=0)
    return {"kind": "sklearn.HistGradientBoostingClassifier", "depth": depth,
            "baseline": float(classifier._baseline_prediction.ravel()[0]), "trees": trees}


def load_trees(d: Mapping[str, Any]) -> dict[str, Any]:
    """``export_trees`` data as padded (n_trees, max_nodes) arrays; a leaf points to itself, so that descending
    `depth` levels leaves every row on its leaf."""
    trees = d["trees"]
    n_trees, width = len(trees), max((len(t["leaf"]) for t in trees), default=1)
    node_ids = np.arange(width)
    feature = np.zeros((n_trees, width), np.int64)
    threshold = np.full((n_trees, width), np.inf)
    left = np.tile(node_ids, (n_trees, 1))
    right = left.copy()
    missing_left = np.ones((n_trees, width), bool)
    value = np.zeros((n_trees, width))
    for i, t in enumerate(trees):
        k = len(t["leaf"])
        leaf = np.asarray(t["leaf"], bool)
        feature[i, :k] = t["feature"]
        threshold[i, :k] = [np.inf if v is None else v for v in t["threshold"]]
        left[i, :k] = np.where(leaf, node_ids[:k], t["left"])
        right[i, :k] = np.where(leaf, node_ids[:k], t["right"])
        missing_left[i, :k] = np.asarray(t["missing_left"], bool)
        value[i, :k] = t["value"]
    return {"baseline": float(d["baseline"]), "depth": int(d["depth"]), "feature": feature, "threshold": threshold,
            "left": left, "right": right, "missing_left": missing_left, "value": value}


def tree_margins(model: Mapping[str, Any], X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Log-odds of "correct" for each row of X under a ``load_trees`` ensemble (all trees descended together; the
    same numbers as the classifier's ``decision_function``)."""
    n_trees = model["feature"].shape[0]
    trees = np.arange(n_trees)[None, :]
    out = np.empty(X.shape[0])
    for s in range(0, X.shape[0], chunk):
        x = X[s:s + chunk]
        node = np.zeros((x.shape[0], n_trees), np.int64)
        for _ in range(model["depth"]):
            v = np.take_along_axis(x, model["feature"][trees, node], 1)
            go_left = np.where(np.isnan(v), model["missing_left"][trees, node], v <= model["threshold"][trees, node])
            node = np.where(go_left, model["left"][trees, node], model["right"][trees, node])
        out[s:s + chunk] = model["baseline"] + model["value"][trees, node].sum(1)
    return out


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
        self._set(params, path)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str | os.PathLike = "<params>") -> "OfflineGrader":
        """A grader from already-loaded parameters (what ``fit_offline_grader`` is about to write)."""
        grader = cls.__new__(cls)
        grader._set(params, Path(path))
        return grader

    def _set(self, params: Mapping[str, Any], path: Path) -> None:
        if not isinstance(params, Mapping) or params.get("format") != PARAMS_FORMAT:
            found = params.get("format") if isinstance(params, Mapping) else None
            raise ValueError(f"{path}: not offline-grader parameters (format {found!r}, expected {PARAMS_FORMAT!r}); "
                             f"regenerate them with `python -m seal_jax.knowledge.grader --fit VERDICTS.jsonl`")
        if tuple(params["feature_names"]) != FEATURE_NAMES:
            raise ValueError(f"{path} was fit on a different feature set than this code computes; regenerate it with "
                             f"`python -m seal_jax.knowledge.grader --fit VERDICTS.jsonl --out {path}`")
        self.path = path
        self.params = params
        self.model = load_trees(params["model"])
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
# The development questions (the "fit" and "select" parts) and their cross-validation folds: a development question's
# fold is its split bucket modulo CV_FOLDS, so a question's rows are always in one fold.
DEVELOPMENT_PARTS = ("fit", "select")
CV_FOLDS = 5
# The hyper-parameters tried (each by CV_FOLDS-fold cross-validation over the development questions); the rest are
# fixed: no early stopping (so no internal random validation split), random_state=0, 255 bins.
HYPERPARAMETER_GRID: tuple[dict[str, Any], ...] = tuple(
    {"max_iter": it, "learning_rate": lr, "max_leaf_nodes": leaves, "min_samples_leaf": min_leaf,
     "l2_regularization": 1.0}
    for it, lr in ((100, 0.1), (200, 0.03), (400, 0.03)) for leaves in (7, 15, 31) for min_leaf in (20, 80))
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(-20, 21))  # decision thresholds on the log-odds tried
BOOTSTRAP_RESAMPLES = 2000


def load_verdicts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows ``{question, gold, prediction, gpt41_correct}`` of a verdicts JSONL file (blank lines skipped; a bad line
    raises a one-line ``ValueError``)."""
    return read_jsonl_strict(path, {k: object for k in VERDICT_FIELDS})


def substring_rule(gold: str, prediction: str) -> bool:
    """The plain baseline: the SQuAD-normalised gold answer is a substring of the normalised prediction."""
    p = normalize_answer(prediction)
    return bool(p) and normalize_answer(gold) in p


def agreement(grader: Grader, rows: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of `rows` on which `grader` agrees with their ``gpt41_correct`` verdict."""
    if not rows:
        return float("nan")
    got = grader.grade([r["question"] for r in rows], [r["gold"] for r in rows], [r["prediction"] for r in rows])
    return float(np.mean([g == bool(r["gpt41_correct"]) for g, r in zip(got, rows)]))


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z); treats rows as independent."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def question_bootstrap_interval(hits: Sequence[bool], questions: Sequence[str], level: float = 0.95,
                                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the agreement, resampling whole QUESTIONS (a question's rows are graded
    together and are not independent), with a fixed seed so the same rows give the same interval."""
    keys, inverse = np.unique(np.asarray(questions, dtype=object).astype(str), return_inverse=True)
    if len(keys) == 0:
        return float("nan"), float("nan")
    agree = np.bincount(inverse, np.asarray(hits, np.float64), len(keys))
    count = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(keys), (resamples, len(keys)))
    stats = agree[draw].sum(1) / count[draw].sum(1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def agreement_stats(hits: Sequence[bool], questions: Sequence[str]) -> dict[str, Any]:
    """Agreement of a set of rows with its 95% intervals: by-question bootstrap (the one quoted) and Wilson."""
    hits = np.asarray(hits, bool)
    return {"rows": int(hits.size), "questions": len(set(questions)),
            "agreement": float(hits.mean()) if hits.size else float("nan"),
            "ci95_bootstrap": list(question_bootstrap_interval(hits, questions)),
            "ci95_wilson": list(wilson_interval(int(hits.sum()), int(hits.size)))}


def answer_styles(prediction: str) -> list[str]:
    """The answer-style groups a prediction falls in (for the per-style agreement check): its length in words,
    and whether it is empty, a list, several lines, run on into a new block, hedged or negated."""
    words = len(prediction.split())
    if not words:
        return ["empty"]
    text, _, n_lines, _, sentence, cut = answer_parts(prediction)
    styles = ["1-3 words" if words <= 3 else "4-12 words" if words <= 12 else "13-40 words" if words <= 40
              else ">40 words"]
    first = tokenize(sentence)
    if _LIST_LINE_RE.search(text):
        styles.append("list")
    if n_lines > 1:
        styles.append("several lines")
    if cut:
        styles.append("run-on cut")
    if any(t in _HEDGES for t in first) or any(u in fold(text).lower() for u in _UNSURE):
        styles.append("hedged or unsure")
    if any(t in _NEGATIONS for t in first):
        styles.append("negated")
    return styles


def _interval(stats: Mapping[str, Any]) -> str:
    lo, hi = stats["ci95_bootstrap"]
    return f"{stats['agreement']:.4f} [{lo:.4f}, {hi:.4f}]"


def out_of_fold_margins(X: np.ndarray, y: np.ndarray, fold: np.ndarray, rows: np.ndarray,
                        hyperparameters: Mapping[str, Any]) -> np.ndarray:
    """Cross-validated log-odds: each row in mask `rows` scored by a ``HistGradientBoostingClassifier`` (the fixed
    settings plus `hyperparameters`) fit on the `rows` of the other folds (``fold`` in ``0..CV_FOLDS-1``); rows
    outside the mask (empty predictions, other splits) stay -inf, i.e. "no". Needs scikit-learn."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    m = np.full(len(y), -np.inf)
    for k in range(CV_FOLDS):
        train, held = rows & (fold != k), rows & (fold == k)
        clf = HistGradientBoostingClassifier(early_stopping=False, random_state=0, **hyperparameters)
        m[held] = clf.fit(X[train], y[train]).decision_function(X[held])
    return m


def fit_offline_grader(verdicts_path: str | os.PathLike, out_path: str | os.PathLike = DEFAULT_PARAMS_PATH,
                       log: Callable[[str], None] = print,
                       grid: Sequence[Mapping[str, Any]] = HYPERPARAMETER_GRID) -> dict[str, Any]:
    """The calibration protocol: on the development questions ("fit" and "select", ``DEVELOPMENT_PARTS``), score every
    `grid` entry by ``CV_FOLDS``-fold cross-validation grouped by question (fold = split bucket % CV_FOLDS) at every
    decision threshold; keep the entry and threshold with the best out-of-fold agreement; refit that entry on all the
    development rows and write it to `out_path`; then measure the written grader (and the substring rule) on the
    "report" questions, which are used for nothing else. Returns (and stores in the parameters file) the calibration
    report: out-of-fold agreement on the development questions, report agreement, and in-sample agreement on "fit"
    and "select" (not a measure). Deterministic: the same file and scikit-learn version give the same parameters.
    Needs scikit-learn (fitting only; grading is numpy)."""
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not grid:
        raise ValueError("the hyper-parameter grid is empty")
    raw = Path(verdicts_path).read_bytes()
    rows = load_verdicts(verdicts_path)
    questions = [split_key(r["question"]) for r in rows]
    bucket = np.asarray([split_bucket(r["question"]) for r in rows])
    part = np.asarray([next(name for name, lo, hi in SPLITS if lo <= b < hi) for b in bucket])
    y = np.asarray([bool(r["gpt41_correct"]) for r in rows])
    has = np.asarray([bool(r["prediction"].strip()) for r in rows])
    for name, lo, hi in SPLITS:
        m = part == name
        log(f"{name:6s} (buckets {lo}-{hi - 1}): {int(m.sum())} rows ({int((m & has).sum())} with a prediction) over "
            f"{len({q for q, k in zip(questions, m) if k})} questions")
    t0 = time.perf_counter()
    X = np.zeros((len(rows), len(FEATURE_NAMES)))
    todo = [r for r, h in zip(rows, has) if h]
    X[has] = feature_matrix([r["question"] for r in todo], [r["gold"] for r in todo], [r["prediction"] for r in todo])
    log(f"features: {X.shape[1]} per row, {time.perf_counter() - t0:.1f}s")
    dev = np.isin(part, DEVELOPMENT_PARTS)
    fold = np.where(dev, bucket % CV_FOLDS, -1)
    dev_has = dev & has
    dev_keys = [q for q, k in zip(questions, dev) if k]
    log(f"development: {int(dev.sum())} rows over {len(set(dev_keys))} questions, {CV_FOLDS} folds of "
        f"{[len({q for q, f in zip(questions, fold) if f == k}) for k in range(CV_FOLDS)]} questions")
    table, best = [], None
    for i, hp in enumerate(grid):
        t0 = time.perf_counter()
        m = out_of_fold_margins(X, y, fold, dev_has, hp)
        scores = [float(np.mean((m[dev] > t) == y[dev])) for t in THRESHOLDS]
        k = max(range(len(THRESHOLDS)), key=lambda j: (scores[j], -abs(THRESHOLDS[j])))
        table.append({"hyperparameters": dict(hp), "cv_agreement": scores[THRESHOLDS.index(0.0)],
                      "best_threshold": THRESHOLDS[k], "cv_agreement_at_best_threshold": scores[k]})
        log(f"[{i + 1}/{len(grid)}] {dict(hp)}: cross-validated {scores[THRESHOLDS.index(0.0)]:.4f} at threshold 0, "
            f"{scores[k]:.4f} at {THRESHOLDS[k]:+.2f} ({time.perf_counter() - t0:.1f}s)")
        if best is None or scores[k] > best[0]:
            best = (scores[k], i, THRESHOLDS[k], m)
    _, chosen, threshold, oof = best
    log(f"chosen: {dict(grid[chosen])}, threshold {threshold:+.2f}; refit on all {int(dev_has.sum())} development rows")
    clf = HistGradientBoostingClassifier(early_stopping=False, random_state=0, **grid[chosen]).fit(X[dev_has],
                                                                                                  y[dev_has])
    params = {
        "format": PARAMS_FORMAT,
        "description": "Offline SQuAD answer grader calibrated on GPT-4.1 verdicts; see seal_jax/knowledge/grader.py",
        "split": {"rule": "bucket = int(sha1(split_key(question)).hexdigest()[:8], 16) % 100; part = the SPLITS "
                          "entry whose [first, end) holds the bucket",
                  "parts": [list(s) for s in SPLITS], "development_parts": list(DEVELOPMENT_PARTS),
                  "cv_folds": CV_FOLDS, "cv_fold_rule": "bucket % cv_folds"},
        "training": {"source": Path(verdicts_path).name, "source_sha1": hashlib.sha1(raw).hexdigest(),
                     "parts": list(DEVELOPMENT_PARTS), "rows": int(dev_has.sum()), "questions": len(set(dev_keys)),
                     "positives": int(y[dev_has].sum()), "fitted_with": f"scikit-learn {sklearn.__version__}",
                     "hyperparameters": dict(grid[chosen]), "selection": table},
        "feature_names": list(FEATURE_NAMES),
        "threshold": threshold,
        "model": export_trees(clf),
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grader = OfflineGrader.from_params(params, out)
    margins = grader.margins([r["question"] for r in rows], [r["gold"] for r in rows],
                             [r["prediction"] for r in rows])
    if not np.allclose(margins[has], clf.decision_function(X[has]), atol=1e-6):
        raise RuntimeError("the exported trees do not reproduce the classifier's margins")
    hits = (margins > threshold) == y
    oof_hits = (oof > threshold) == y
    base = np.asarray([substring_rule(r["gold"], r["prediction"]) for r in rows]) == y
    report: dict[str, Any] = {"ci": f"95% percentile bootstrap over questions ({BOOTSTRAP_RESAMPLES} resamples, "
                                    f"seed 0); Wilson 95% alongside"}
    log(f"{'rows':29s} {'rows':>5s} {'questions':>9s}  offline grader [95% CI]    substring rule [95% CI]")
    report["development_cv"] = {"offline_grader": agreement_stats(oof_hits[dev], dev_keys),
                                "substring_rule": agreement_stats(base[dev], dev_keys)}
    log(f"{'development, out-of-fold':29s} {int(dev.sum()):5d} {len(set(dev_keys)):9d}  "
        f"{_interval(report['development_cv']['offline_grader'])}  "
        f"{_interval(report['development_cv']['substring_rule'])}")
    for name, _, _ in SPLITS:
        m = part == name
        qs = [q for q, k in zip(questions, m) if k]
        report[name] = {"offline_grader": agreement_stats(hits[m], qs), "substring_rule": agreement_stats(base[m], qs)}
        label = f"{name}, trained on" if name in DEVELOPMENT_PARTS else f"{name}, unseen"
        log(f"{label:29s} {int(m.sum()):5d} {len(set(qs)):9d}  {_interval(report[name]['offline_grader'])}  "
            f"{_interval(report[name]['substring_rule'])}" + ("  (in-sample: not a measure)"
                                                              if name in DEVELOPMENT_PARTS else ""))
    styles: dict[str, list[int]] = {}
    for i in np.flatnonzero(dev):
        for s in answer_styles(rows[i]["prediction"]):
            styles.setdefault(s, []).append(i)
    report["development_cv_by_answer_style"] = {
        s: {"rows": len(idx), "offline_grader": float(oof_hits[idx].mean()), "substring_rule": float(base[idx].mean())}
        for s, idx in sorted(styles.items())}
    log("development questions, out-of-fold, by answer style (rows, offline grader, substring rule): " + "; ".join(
        f"{s} {v['rows']} {v['offline_grader']:.3f} {v['substring_rule']:.3f}"
        for s, v in report["development_cv_by_answer_style"].items()))
    params["calibration"] = report
    out.write_text(json.dumps(params, separators=(",", ":")) + "\n", encoding="utf-8")
    log(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m seal_jax.knowledge.grader",
                        description="Calibrate the offline grader on a GPT-4.1 verdicts JSONL file: choose by "
                                    "cross-validation over the 'fit' and 'select' questions, refit on them, report "
                                    "on the 'report' questions.")
    ap.add_argument("--fit", required=True, metavar="VERDICTS.jsonl",
                    help="rows {question, gold, prediction, gpt41_correct}")
    ap.add_argument("--out", default=str(DEFAULT_PARAMS_PATH), help="where to write the parameters JSON")
    args = ap.parse_args(argv)
    try:
        fit_offline_grader(args.fit, args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
