"""seal_jax.knowledge.grader: normalisation, hand-computed feature values, the fit/select/report split, the exported
trees against scikit-learn, the calibration protocol's reproducibility, the calibrated offline grader (its agreement
with GPT-4.1 on the report split, and the substring rule's miss categories), the LLM judge's prompt, parsing and
batching with a fake generate, and the OpenAI-compatible grader against a local stub server."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seal_jax.knowledge import grader as G
from seal_jax.knowledge.grader import (
    DEFAULT_PARAMS_PATH,
    FEATURE_NAMES,
    GRADE_TEMPLATE,
    SPLITS,
    LLMJudge,
    OfflineGrader,
    OpenAIGrader,
    build_grade_prompt,
    canonical_tokens,
    load_verdicts,
    make_grader,
    normalize_answer,
    parse_verdict,
    split_key,
    split_of,
    tokenize,
)
from tests.conftest import shared_path

VERDICTS = ("data", "grader", "squad_gpt41_verdicts_dev.jsonl")


@pytest.fixture(scope="module")
def offline():
    return OfflineGrader()


@pytest.fixture(scope="module")
def verdicts():
    return load_verdicts(shared_path(*VERDICTS))


# ============================================================================================== normalisation

def test_normalize_answer_squad_style():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("single-tape Turing machines") == "singletape turing machines"  # SQuAD drops punctuation
    assert normalize_answer("Æthelred  the Unready") == normalize_answer("aethelred unready") == "aethelred unready"
    assert normalize_answer("Zürich") == "zurich"
    assert normalize_answer("   ") == ""


def test_tokenize_and_canonical_numbers():
    assert tokenize("10,000,000 people in 1840-1841.") == ["10000000", "people", "in", "1840", "1841"]
    assert tokenize("Kanye's albums") == ["kanye", "albums"]
    assert canonical_tokens(["ten", "million"]) == ["10000000"]
    assert canonical_tokens(tokenize("10 million")) == canonical_tokens(tokenize("10,000,000")) == ["10000000"]
    assert canonical_tokens(["twenty", "five", "years"]) == ["25", "years"]
    assert canonical_tokens(["the", "eleventh", "doctor"]) == ["the", "11", "doctor"]
    assert canonical_tokens(["3.5", "billion"]) == ["3500000000"]


@pytest.mark.parametrize("question, gold, prediction", [
    ("Who?", "Major General James Abercrombie", "James Abercrombie"),
    ("When?", "1840", "It was not 1840 or 1841."),
    ("What?", "x", ""),
    ("Topic: T\nHow many?", "ten million (10,000,000)", "1. About 10 million\n2. Maybe more\n\nQ: next?"),
])
def test_features_have_fixed_names_and_order(question, gold, prediction):
    names = list(G._feature_dict(question, gold, prediction))
    assert names == list(FEATURE_NAMES) and len(set(names)) == len(names)
    row = G.extract_features(question, gold, prediction)
    assert len(row) == len(FEATURE_NAMES) and all(isinstance(v, float) for v in row)


def _features(question, gold, prediction, names):
    f = G._feature_dict(question, gold, prediction)
    return {k: f[k] for k in names}


def test_hand_computed_feature_values():
    # gold content stems {major, gener, jam, abercrombi} ("general" -> "gener", "james" -> "jam"); the prediction has
    # 2 of them and nothing else; "major" and "general" are titles, so the gold's core "james abercrombie" is in it
    assert _features("Who?", "Major General James Abercrombie", "James Abercrombie", [
        "sub_squad_full", "pred_in_gold", "exact", "recall_full", "precision_full", "f1_full", "len_gold", "len_full",
        "name_recall_claim", "gold_core_in_claim", "qtype_2"]) == {
        "sub_squad_full": 0.0, "pred_in_gold": 1.0, "exact": 0.0, "recall_full": 0.5, "precision_full": 1.0,
        "f1_full": pytest.approx(2 / 3), "len_gold": 4.0, "len_full": 2.0, "name_recall_claim": 0.5,
        "gold_core_in_claim": 1.0, "qtype_2": 1.0}
    # "ten million" and "10,000,000" are one number, 10000000, twice (so the two-token run is not in the answer);
    # the parenthesis makes two gold alternatives, each fully in the claim; "about" is a hedge
    assert _features("How many?", "ten million (10,000,000)", "About 10 million people.", [
        "gold_numbers", "num_recall_full", "gold_is_number", "seq_full", "gold_alternative_recall_claim",
        "hedges_sent", "qtype_0"]) == {
        "gold_numbers": 1.0, "num_recall_full": 1.0, "gold_is_number": 1.0, "seq_full": 0.0,
        "gold_alternative_recall_claim": 1.0, "hedges_sent": 1.0, "qtype_0": 1.0}
    # tokens it/was/not/1840/or/1841: the gold at position 3 of 6, "not" before it, one extra year, one "or"
    assert _features("When?", "1840", "It was not 1840 or 1841.", [
        "negations_claim", "or_claim", "year_recall_claim", "year_extra_claim", "years_equal_claim",
        "negation_before_match", "match_pos", "match_abs", "gold_is_year", "qtype_1"]) == {
        "negations_claim": 1.0, "or_claim": 1.0, "year_recall_claim": 1.0, "year_extra_claim": 1.0,
        "years_equal_claim": 0.0, "negation_before_match": 1.0, "match_pos": 0.5, "match_abs": 3.0,
        "gold_is_year": 1.0, "qtype_1": 1.0}

    # soft matches: the gold stem "greek" and the answer's "greec" ("Greece") share 4 letters of 5 (0.8 >= 0.6);
    # "bord" ("borders") is not matched: (0.8 + 0) / 2
    assert _features("Where are they found?", "Greek borders", "In northern Greece.", [
        "soft_recall_full", "soft_recall_claim", "soft_novel_recall_claim", "recall_full"]) == {
        "soft_recall_full": pytest.approx(0.4), "soft_recall_claim": pytest.approx(0.4),
        "soft_novel_recall_claim": pytest.approx(0.4), "recall_full": 0.0}
    # "1640s" is the years 1640-1649: 1649 lies in it (no gold year, so the reverse check is not applicable)
    assert _features("When?", "1640s", "In 1649, the abbey was attacked.", [
        "period_in_full", "period_in_claim", "claim_period_holds_gold_year"]) == {
        "period_in_full": 1.0, "period_in_claim": 1.0, "claim_period_holds_gold_year": -1.0}
    # "10th century" is the years 900-999 and holds 955; the answer names the decade (1640-1649) of the gold year
    assert _features("When?", "10th century", "From 955 to 1806.", ["period_in_claim"]) == {"period_in_claim": 1.0}
    assert _features("When?", "1649", "In the 1640s.", ["period_in_claim", "claim_period_holds_gold_year"]) == {
        "period_in_claim": -1.0, "claim_period_holds_gold_year": 1.0}
    # three gold items {ic}, {microchip}, {simply, chip}: "ic" found, "simply chips" half found, "microchips" not
    assert _features("What are some abbreviations for integrated circuits?", "IC, microchips or simply chips",
                     "IC and chips", ["gold_items", "gold_items_found_full", "gold_items_found_claim"]) == {
        "gold_items": 3.0, "gold_items_found_full": pytest.approx(2 / 3),
        "gold_items_found_claim": pytest.approx(2 / 3)}
    assert _features("Who?", "Ann", "Ann.", ["gold_items", "gold_items_found_full"]) == {
        "gold_items": 1.0, "gold_items_found_full": -1.0}
    # numbers a gold answer bounds: "under 40%" holds 36 (strictly below 40), "over 150" does not hold 150,
    # "20% to 25%" holds 20, "hundreds" holds 200-999; "1840" states no bound
    for gold, prediction, within in (("under 40%", "36%", 1.0), ("over 150", "150 players", 0.0),
                                     ("20% to 25%", "About 20%.", 1.0), ("hundreds", "Over 200.", 1.0),
                                     ("1840", "1841", -1.0)):
        assert _features("How many?", gold, prediction, ["num_within_bounds_claim"]) == {
            "num_within_bounds_claim": within}, (gold, prediction)
    # irregular forms and -ism/-ian suffixes share a stem with their base
    assert [G.stem(w) for w in ("fled", "flee", "broken", "break", "puritanism", "puritans")] == [
        "fle", "fle", "break", "break", "puritan", "puritan"]


def test_split_is_by_question_disjoint_and_deterministic():
    q = "Who was appointed as second in command to Lor Loudoun in 1756?"
    assert split_key(f"Topic: French and Indian War\n{q}") == split_key(q) == split_key(q.upper() + "  ")
    # pinned: int(sha1(b"who was appointed as second in command to lor loudoun in 1756").hexdigest()[:8], 16) % 100
    assert G.split_bucket(q) == 13 and split_of(q) == split_of(f"Topic: X\n{q}") == "fit"
    assert split_of("Greece's Jewish community spoke what language traditionally?") == "select"
    assert split_of("What genus has self-fertilization been seen?") == "report"
    # the parts tile the buckets 0..99 without overlap
    assert [(lo, hi) for _, lo, hi in SPLITS] == [(0, 60), (60, 80), (80, 100)]
    names = [split_of(f"question number {i}?") for i in range(3000)]
    shares = {n: names.count(n) / len(names) for n, _, _ in SPLITS}
    assert 0.56 < shares["fit"] < 0.64 and 0.17 < shares["select"] < 0.23 and 0.17 < shares["report"] < 0.23


def test_agreement_intervals():
    lo, hi = G.wilson_interval(8, 10)  # the textbook Wilson 95% interval of 8/10
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert G.question_bootstrap_interval([True] * 6, list("aabbcc")) == (1.0, 1.0)
    hits = [True, True, True, False, False, False, True, False] * 10
    qs = [f"q{i // 4}" for i in range(len(hits))]  # 20 questions of 4 rows: each all-right or all-wrong
    boot = G.question_bootstrap_interval(hits, qs)
    assert boot == G.question_bootstrap_interval(hits, qs)  # seeded
    wilson = G.wilson_interval(sum(hits), len(hits))
    assert boot[0] <= 0.5 <= boot[1] and boot[1] - boot[0] > wilson[1] - wilson[0]  # rows of a question move together
    stats = G.agreement_stats(hits, qs)
    assert stats["rows"] == 80 and stats["questions"] == 20 and stats["agreement"] == 0.5


def test_answer_styles():
    assert G.answer_styles("  ") == ["empty"]
    assert G.answer_styles("Paris") == ["1-3 words"]
    assert G.answer_styles("1. Paris\n2. Lyon") == ["4-12 words", "list", "several lines"]  # 4 words
    assert G.answer_styles("It is probably not Paris, but Lyon.") == ["4-12 words", "hedged or unsure", "negated"]


# ============================================================================================== offline grader

def test_shipped_parameters_are_small_and_match_the_code():
    size = DEFAULT_PARAMS_PATH.stat().st_size
    assert 1_000 < size < 1_000_000
    params = json.loads(DEFAULT_PARAMS_PATH.read_text())
    assert params["format"] == G.PARAMS_FORMAT
    assert tuple(params["feature_names"]) == FEATURE_NAMES
    assert params["split"]["parts"] == [list(s) for s in SPLITS]
    assert params["training"]["hyperparameters"] in [dict(hp) for hp in G.HYPERPARAMETER_GRID]
    assert params["threshold"] in G.THRESHOLDS


def _in_subprocess(body: str, *args: str) -> None:
    """Run `body(*args)` of this module in a fresh interpreter: scikit-learn (its own OpenMP runtime) never loads into
    the test process, where a later XLA compile crashed beside it (segfault in tests/test_engine.py, twice, full suite)."""
    pytest.importorskip("sklearn")
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import tests.knowledge.test_grader as t; t.{body}(*{list(args)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_exported_trees_reproduce_scikit_learn():
    _in_subprocess("_exported_trees_reproduce_scikit_learn")


def _exported_trees_reproduce_scikit_learn():
    import numpy as np
    from sklearn import ensemble
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    y = (X[:, 1] > 0.3) & (X[:, 2] < 1.0) | (X[:, 3] > 1.5)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values take the side each node learnt
    clf = ensemble.HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=7, early_stopping=False,
                                                  random_state=0).fit(X, y)
    model = G.load_trees(json.loads(json.dumps(G.export_trees(clf))))
    assert np.allclose(G.tree_margins(model, X, chunk=64), clf.decision_function(X), atol=1e-6)
    assert ((G.tree_margins(model, X) > 0) == clf.predict(X)).all()


def _synthetic_verdicts(path, n_questions=240):
    """Rows whose GPT verdict is the gold-substring rule's except on negated answers ("It is not red.")."""
    rows = []
    for i in range(n_questions):
        q, gold = f"Which colour is object number {i}?", ["red", "green", "blue", "violet"][i % 4]
        for j, pred in enumerate([f"It is {gold}.", "It is orange.", gold, f"It is not {gold}.", ""]):
            correct = bool(pred) and gold in pred and j != 3
            rows.append({"question": q, "gold": gold, "prediction": pred, "gpt41_correct": correct})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_protocol_is_reproducible_and_chooses_by_cross_validation(tmp_path):
    _in_subprocess("_fit_protocol_is_reproducible_and_chooses_by_cross_validation", str(tmp_path))


def _fit_protocol_is_reproducible_and_chooses_by_cross_validation(tmp):
    import pathlib
    tmp_path = pathlib.Path(tmp)
    src = _synthetic_verdicts(tmp_path / "verdicts.jsonl")
    grid = [{"max_iter": 5, "learning_rate": 0.1, "max_leaf_nodes": 3, "min_samples_leaf": 20},
            {"max_iter": 40, "learning_rate": 0.1, "max_leaf_nodes": 7, "min_samples_leaf": 5}]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    report = G.fit_offline_grader(src, a, log=lambda _: None, grid=grid)
    G.fit_offline_grader(src, b, log=lambda _: None, grid=grid)
    assert a.read_bytes() == b.read_bytes()
    params = json.loads(a.read_text())
    table = params["training"]["selection"]
    best = max(range(len(grid)), key=lambda i: table[i]["cv_agreement_at_best_threshold"])
    assert params["training"]["hyperparameters"] == grid[best] and params["threshold"] == table[best]["best_threshold"]
    # trained on the development questions ("fit" and "select"), non-empty rows only; "report" is never trained on
    dev = sum(split_of(f"Which colour is object number {i}?") in G.DEVELOPMENT_PARTS for i in range(240))
    assert params["training"]["rows"] == dev * 4 and params["training"]["questions"] == dev
    assert params["split"]["cv_folds"] == G.CV_FOLDS
    assert set(report) >= {"development_cv", "fit", "select", "report", "development_cv_by_answer_style"}
    assert report["development_cv"]["offline_grader"]["rows"] == dev * 5
    assert report["report"]["offline_grader"]["agreement"] > report["report"]["substring_rule"]["agreement"]
    assert params["calibration"]["report"] == report["report"]
    grader = OfflineGrader(a)
    assert grader.grade(["Which colour is object number 3?"] * 2, ["violet"] * 2, ["It is violet.", "It is red."]) \
        == [True, False]
    assert not grader.grade_one("Which colour is object number 3?", "violet", "It is not violet.")


def test_report_agreement_with_gpt41(offline, verdicts):
    """The shipped parameters were chosen by cross-validation over the "fit" and "select" questions and fit on both;
    the "report" questions were used for nothing else. On them the grader agrees with GPT-4.1 on 0.8974 of the rows
    (95% bootstrap interval over questions 0.876-0.917, see benchmarks/RESULTS.md); it must stay at 0.89 or more and
    well above the substring rule (0.8567 there)."""
    parts = {name: [r for r in verdicts if split_of(r["question"]) == name] for name, _, _ in SPLITS}
    keys = {name: {split_key(r["question"]) for r in rows} for name, rows in parts.items()}
    assert all(keys.values()) and not (keys["fit"] & keys["select"] or keys["fit"] & keys["report"]
                                       or keys["select"] & keys["report"]), "a question is in two parts"
    params = json.loads(DEFAULT_PARAMS_PATH.read_text())
    # trained on the development questions ("fit" and "select") only
    dev = parts["fit"] + parts["select"]
    assert params["training"]["rows"] == sum(1 for r in dev if r["prediction"].strip())
    assert params["training"]["questions"] == len(keys["fit"] | keys["select"])

    held = parts["report"]
    got = offline.grade([r["question"] for r in held], [r["gold"] for r in held], [r["prediction"] for r in held])
    truth = [bool(r["gpt41_correct"]) for r in held]
    agree = sum(a == b for a, b in zip(got, truth)) / len(held)
    base = sum(G.substring_rule(r["gold"], r["prediction"]) == t for r, t in zip(held, truth)) / len(held)
    assert agree == pytest.approx(params["calibration"]["report"]["offline_grader"]["agreement"])
    # the substring rule's two kinds of misses, and how the offline grader does on them
    fn = [i for i, r in enumerate(held) if truth[i] and not G.substring_rule(r["gold"], r["prediction"])]
    fp = [i for i, r in enumerate(held) if not truth[i] and G.substring_rule(r["gold"], r["prediction"])]
    print(f"\nreport: {len(held)} rows over {len(keys['report'])} questions; offline grader agreement with GPT-4.1 "
          f"{agree:.4f}, substring rule {base:.4f}; on the substring rule's misses the offline grader agrees on "
          f"{sum(got[i] for i in fn)}/{len(fn)} GPT-yes-but-no-substring rows and {sum(not got[i] for i in fp)}/"
          f"{len(fp)} substring-but-GPT-no rows")
    assert agree >= 0.89
    assert agree > base + 0.02


def _grade(offline, question, gold, prediction):
    return offline.grade_one(question, gold, prediction)


def test_partial_names(offline):
    q = "Who was appointed as second in command to Lor Loudoun in 1756?"
    assert _grade(offline, q, "Major General James Abercrombie", "Major General James Abercrombie.")
    assert _grade(offline, q, "Major General James Abercrombie", "James Abercrombie")
    assert not _grade(offline, q, "Major General James Abercrombie", "Lord William Howe.")
    q = "Who did Dinwiddie order to address French in Virginia territory?"
    assert _grade(offline, q, "Major George Washington", "George Washington")


def test_number_and_date_forms(offline):
    q = "How many square miles of territory were added to the British Empire between 1815 and 1914?"
    assert _grade(offline, q, "10,000,000", "Approximately 10 million square miles of territory were added.")
    assert not _grade(offline, q, "10,000,000", "Approximately 2 million square miles of territory were added.")
    q = "How many people did the Islamic State control the territory of as of March 2015?"
    assert _grade(offline, q, "ten million", "As of March 2015, the Islamic State controlled about 10 million people.")
    q = "How many of Kanye's albums placed on the 2012 Rolling Stone list?"
    assert _grade(offline, q, "3", "Three of Kanye West's albums were placed on the list.")
    q = "Which Doctor was the current Doctor during the 50th Anniversary special?"
    assert _grade(offline, q, "the Eleventh Doctor", "The 11th Doctor, played by Matt Smith.")
    q = "What years did Tigranes the Great reign?"
    assert _grade(offline, q, "95–55 BC", "Tigranes the Great ruled the Kingdom of Armenia from 95 BC to 55 BC.")
    q = "When did Espartero rule?"
    gold = "16 September 1840 to 21 May 1841"
    assert _grade(offline, q, gold, "He ruled Spain from 16 September 1840 to 21 May 1841.")
    assert _grade(offline, q, gold, "1840-1841.")
    assert not _grade(offline, q, gold, "1840–1843")


def test_paraphrase_and_word_forms(offline):
    q = "What is Kenya doing to determine if there are more reserves?"
    assert _grade(offline, q, "Exploration", "Kenya is exploring for more oil reserves.")
    q = "What type of power was displayed at the World's fair by Westinghouse and Tesla?"
    assert _grade(offline, q, "AC power", "Alternating current (AC)")
    q = "Is it easier or harder to change EU law than stay the same?"
    assert _grade(offline, q, "harder", "It is generally harder to change EU law than stay the same.")
    assert not _grade(offline, q, "harder", "Easier to change EU law than stay the same.")


def test_gold_inside_a_wrong_answer(offline):
    q = "What was the name of Queen's first album?"
    assert not _grade(offline, q, "Queen", 'The name of Queen\'s first album was "Killers".')
    q = "From what pad was Apollo 5 launched from?"
    assert _grade(offline, q, "pad 37", "Apollo 5 was launched from pad 37.")


def test_run_on_past_the_answer(offline):
    """Greedy answers often run on into a new "Q:/Question:" block or a system-prompt echo; the grader judges the
    answer before it, so a gold answer that only appears in the run-on does not count."""
    q = "Which club fielded the first entirely foreign starting line-up?"
    run_on = "\n\nQ: Topic: Premier League\nQuestion: Who won in 1999?\nAnswer:\n"
    assert not _grade(offline, q, "Chelsea", "Arsenal." + run_on + "Chelsea")
    assert not _grade(offline, q, "Chelsea", "Arsenal fielded the first entirely foreign line-up." + run_on + "Chelsea")
    assert _grade(offline, q, "Chelsea", "Chelsea became the first Premier League side to field an entirely foreign "
                                         "starting line-up." + run_on + "Arsenal")
    assert _grade(offline, q, "Chelsea", "On 26 December 1999, Chelsea fielded an entirely foreign starting line-up.\n"
                                         "You are an AI assistant that helps people find information.")
    text, _, n_lines, claim, sentence, cut = G.answer_parts("Chelsea did. It was 1999." + run_on + "Arsenal")
    assert cut and text == "Chelsea did. It was 1999." and n_lines == 1 and sentence == "Chelsea did."
    assert G.answer_parts("1. Linear stepper motors\n2. Servomotors")[3] == "Linear stepper motors"
    assert G.answer_parts("They include:\n- IC\n- chips")[3] == "They include: IC"


def test_empty_prediction_is_false_and_batches_line_up(offline):
    qs = ["What genus?", "What genus?", "What genus?"]
    gs = ["Mnemiopsis"] * 3
    assert offline.grade(qs, gs, ["", "Mnemiopsis", "   \n"]) == [False, True, False]
    assert offline.grade([], [], []) == []
    probs = offline.probabilities(qs, gs, ["", "Mnemiopsis", "Beroe"])
    assert probs[0] == 0.0 and probs[1] > 0.5 > probs[2]
    with pytest.raises(ValueError, match="differ in length"):
        offline.grade(qs, gs, ["x"])
    assert offline(qs, gs, gs) == offline.grade(qs, gs, gs) == [True] * 3
    assert offline.grade_one("What genus?", "Mnemiopsis", "Mnemiopsis") is True


def test_stale_or_foreign_parameters_are_refused(tmp_path):
    bad = tmp_path / "p.json"
    params = json.loads(DEFAULT_PARAMS_PATH.read_text())
    params["feature_names"] = params["feature_names"][:-1]
    bad.write_text(json.dumps(params))
    with pytest.raises(ValueError, match="different feature set"):
        OfflineGrader(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not offline-grader parameters"):
        OfflineGrader(bad)
    with pytest.raises(FileNotFoundError, match="--fit"):
        OfflineGrader(tmp_path / "missing.json")


def test_make_grader_names():
    assert isinstance(make_grader("offline"), OfflineGrader)
    assert isinstance(make_grader("openai", base_url="http://127.0.0.1:9/v1"), OpenAIGrader)
    with pytest.raises(ValueError, match="unknown grader"):
        make_grader("gpt5")


# ============================================================================================== LLM judge

def test_grade_prompt_layout():
    p = build_grade_prompt("Topic: Queen\nWhat was the first album?", "Queen", "  Queen (1973).\n")
    assert p.endswith("Reply with yes or no.")
    assert "Question: Topic: Queen\nWhat was the first album?\nGold answer: Queen\nStudent answer: Queen (1973).\n" in p
    instructions = p.split("\n\n")[0].lower()
    for phrase in ("gold answer", "knowledge", "fully conveys", "contradicts", "style"):
        assert phrase in instructions
    assert build_grade_prompt("q {x}", "g}", "{p").count("{") == 2  # braces in the fields are kept verbatim
    assert "{question}" in GRADE_TEMPLATE


@pytest.mark.parametrize("reply, verdict", [
    ("Yes.", True), ("yes", True), ("YES", True), (" Yes, the student answer is correct.", True),
    ("no", False), ("No.", False), ("yes, but no", False), ("Yes\nNo", False), ("yesterday", False),
    ("The answer is yes!", True), ("Not sure", False), ("", False), (None, False), ("nope", False),
    ("I would say no, not yes", False), ("eyes", False),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


class CharTokenizer:
    """One token per character (code point + 3); 0/1/2 are reserved."""

    stop_token_ids = [2]

    def encode(self, text):
        return [ord(c) + 3 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i > 2)


class FakeGenerate:
    """Answers "Yes." when the student answer line says "right", "No." otherwise; records every call."""

    def __init__(self, tokenizer):
        self.tok, self.calls = tokenizer, []

    def __call__(self, model, prompts, max_new_tokens, temperature, stop_token_ids):
        self.calls.append({"model": model, "n": len(prompts), "max_new_tokens": max_new_tokens,
                           "temperature": temperature, "stop": stop_token_ids,
                           "lengths": [len(p) for p in prompts]})
        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            student = text.split("Student answer: ")[1].split("\n")[0]
            out.append(self.tok.encode("Yes." if "right" in student else "No."))
        return out


def test_llm_judge_batches_and_keeps_row_order():
    tok = CharTokenizer()
    fake = FakeGenerate(tok)
    judge = LLMJudge("MODEL", tok, batch_size=3, max_new_tokens=5, generate_fn=fake)
    preds = ["right", "", "wrong", "right answer, longer", "nope", "  ", "right", "x" * 50]
    n = len(preds)
    got = judge.grade([f"Question {i}?" for i in range(n)], ["gold"] * n, preds)
    assert got == [True, False, False, True, False, False, True, False]
    sent = [c["n"] for c in fake.calls]
    assert sent == [3, 3], "six non-empty rows in batches of three; empty predictions are never sent"
    for c in fake.calls:
        assert c["model"] == "MODEL" and c["temperature"] == 0.0 and c["max_new_tokens"] == 5 and c["stop"] == [2]
    lengths = [n for c in fake.calls for n in c["lengths"]]
    assert lengths == sorted(lengths), "prompts are batched in length order"
    replies = judge.replies(["q"], ["g"], ["right"])
    assert replies == ["Yes."]
    assert judge.grade([], [], []) == [] and len(fake.calls) == 3


def test_llm_judge_chat_template():
    class ChatTokenizer(CharTokenizer):
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, add_generation_prompt=True):
            assert add_generation_prompt and messages[0]["role"] == "user"
            return self.encode("<user>" + messages[0]["content"] + "<assistant>")

    tok = ChatTokenizer()
    fake = FakeGenerate(tok)
    judge = LLMJudge(None, tok, generate_fn=fake)
    assert judge.chat
    assert tok.decode(judge.encode_prompt("hi")) == "<user>hi<assistant>"
    assert judge.grade(["q"], ["g"], ["right"]) == [True]
    assert not LLMJudge(None, CharTokenizer(), generate_fn=fake).chat
    assert not LLMJudge(None, tok, chat=False, generate_fn=fake).chat


def test_llm_judge_default_generate_is_seal_jax_generate():
    """Without generate_fn the judge calls seal_jax.generate, whose keywords are the ones the judge passes."""
    import inspect

    import seal_jax

    judge = LLMJudge(None, CharTokenizer())
    assert judge.generate_fn is seal_jax.generate
    params = inspect.signature(seal_jax.generate).parameters
    assert {"max_new_tokens", "temperature", "stop_token_ids"} <= set(params)


# ============================================================================================== OpenAI endpoint

class _Stub:
    """A local chat-completions server: fails the first `fail_first` requests with HTTP 500, then answers."""

    def __init__(self, reply="Yes.", fail_first=0):
        self.reply, self.fail_first, self.requests = reply, fail_first, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if len(stub.requests) <= stub.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                content = stub.reply(body) if callable(stub.reply) else stub.reply
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_openai_grader_against_a_local_stub():
    def reply(body):
        prompt = body["messages"][0]["content"]
        return "Yes" if "Student answer: Ladino" in prompt else "No, it is not."

    with _Stub(reply) as stub:
        g = OpenAIGrader(base_url=stub.url, model="judge-1", api_key="sk-test", backoff_s=0.0, workers=2)
        got = g.grade(["Q1?", "Q2?", "Q3?"], ["Ladino"] * 3, ["Ladino", "", "Greek"])
    assert got == [True, False, False]
    assert len(stub.requests) == 2, "the empty prediction is not sent"
    r = next(r for r in stub.requests if "Question: Q1?" in r["body"]["messages"][0]["content"])
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test"
    assert r["body"]["model"] == "judge-1" and "temperature" not in r["body"]
    assert r["body"]["messages"][0]["content"] == build_grade_prompt("Q1?", "Ladino", "Ladino")


def test_openai_grader_retries_then_gives_false():
    with _Stub("yes", fail_first=2) as stub:
        g = OpenAIGrader(base_url=stub.url, model="m", api_key="", backoff_s=0.0, temperature=0.0)
        assert g.grade_one("Q?", "gold", "gold") is True
    assert len(stub.requests) == 3 and stub.requests[0]["auth"] is None
    assert stub.requests[0]["body"]["temperature"] == 0.0
    with _Stub("yes", fail_first=10) as stub:
        g = OpenAIGrader(base_url=stub.url, model="m", backoff_s=0.0)
        assert g.grade_one("Q?", "gold", "gold") is False
    assert len(stub.requests) == 3 and g.failed_requests == 1


def test_openai_grader_unreachable_and_env(monkeypatch):
    with _Stub() as stub:
        url = stub.url  # the port is free again once the stub is closed
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    g = OpenAIGrader(backoff_s=0.0, timeout_s=2.0)
    assert g.base_url == url and g.api_key == "sk-env" and g.model == "gpt-4.1"
    assert g.grade(["Q?"], ["gold"], ["gold"]) == [False] and g.failed_requests == 1
