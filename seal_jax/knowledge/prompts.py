"""Prompts for knowledge incorporation: the self-edit generation prompts and the question-answering prompt.

Self-edit prompts (spec S1). Every variant has the original's layout, which is what the model continues from:

    <one-line instruction>
    <blank line>
    Passage:
    {title}
    {context}
    <blank line>
    <header>

with the header ``Implications:`` + newline (``implications``, ``implications-long``, ``implications-very-long``),
``Rewritten passages:`` + newline (``rewrite``) or ``Question 1: `` with no newline (``self-qa``, so the model goes
straight on with the first question; ``build_train_sequences`` restores that prefix on the first chunk). The
instruction sentences are our own wording of what each original variant asks for, so prompts built here are not
byte-identical to the original's. Where byte-identity matters (sampling from a SEAL checkpoint trained on the
original prompt, or rebuilding ReST-EM SFT rows) recover the exact template from a stored self-edit file, whose
``prompt`` field holds the original text, with ``template_from_prompt`` and pass it as ``template=``:

    template = template_from_prompt(stored.prompt, stored.title, stored.context)
    format_self_edit_prompt(passage, template=template)        # byte-identical to the stored prompts

Answer prompt (spec S2, "Answering"): this one is scored against, so it follows the original exactly: the
instruction line, ``Question: {question}``, ``Answer:`` and a newline, where the drivers always fill ``{question}``
with ``Topic: {title}\\n{question}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from seal_jax.knowledge.data import Passage

__all__ = [
    "ANSWER_TEMPLATE",
    "INSTRUCT_ANSWER_SYSTEM",
    "PromptFormat",
    "PROMPT_VARIANTS",
    "PromptVariant",
    "format_answer_prompt",
    "format_answer_prompts",
    "format_self_edit_prompt",
    "template_from_prompt",
    "topic_question",
]

# The original's base-model answering template (utils.SQUAD_ANSWER_TEMPLATE_BASE), byte for byte.
ANSWER_TEMPLATE = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"

_PASSAGE_BLOCK = "{title}\n{context}"


@dataclass(frozen=True)
class PromptVariant:
    """A self-edit prompt variant: its registry key, what it asks for, and a template with ``{title}``/``{context}``."""

    name: str
    description: str
    template: str
    instruction: str = ""  # the request alone (an instruct model's system message)

    def format(self, title: str, context: str) -> str:
        """The generation prompt for one passage."""
        return self.template.format(title=title, context=context)


def _variant(name: str, description: str, instruction: str, header: str) -> PromptVariant:
    """Instruction, blank line, ``Passage:``, title, context, blank line, header (the original's layout)."""
    return PromptVariant(name, description, f"{instruction}\n\nPassage:\n{_PASSAGE_BLOCK}\n\n{header}", instruction)


_IMPLICATIONS_HEADER = "Implications:\n"

PROMPT_VARIANTS: Mapping[str, PromptVariant] = MappingProxyType({
    v.name: v for v in (
        _variant(
            "implications",
            "a list of implications of the passage (the main SEAL setting)",
            "Read the passage below and write a list of the implications that can be drawn from it, "
            "both direct and indirect.", _IMPLICATIONS_HEADER),
        _variant(
            "implications-long",
            "the same request for a long list of implications",
            "Read the passage below and write a long list of the implications that can be drawn from it, "
            "both direct and indirect.", _IMPLICATIONS_HEADER),
        _variant(
            "implications-very-long",
            "the same request for a very long list of implications",
            "Read the passage below and write a very long list of the implications that can be drawn "
            "from it, both direct and indirect.", _IMPLICATIONS_HEADER),
        _variant(
            "rewrite",
            "several alternative rewrites of the passage, one per line",
            "Read the passage below and restate it in several different ways, writing each version on "
            "its own line.", "Rewritten passages:\n"),
        _variant(
            "self-qa",
            "the passage restated as question-answer pairs; the prompt ends inside the first question",
            "Read the passage below and restate what it says as a series of questions, each followed by "
            "its answer.", "Question 1: "),
    )
})
"""Self-edit prompt variants by key (the original's ``--prompt_key`` values)."""


def format_self_edit_prompt(passage: Passage, variant: str = "implications", *, template: str | None = None) -> str:
    """The self-edit generation prompt for ``passage``.

    ``variant`` picks a template from ``PROMPT_VARIANTS``; ``template`` (a string with ``{title}`` and
    ``{context}``, e.g. from ``template_from_prompt``) overrides it.
    """
    if template is not None:
        return template.format(title=passage.title, context=passage.context)
    try:
        chosen = PROMPT_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown self-edit prompt variant {variant!r}; "
                         f"expected one of {', '.join(PROMPT_VARIANTS)}") from None
    return chosen.format(passage.title, passage.context)


def template_from_prompt(prompt: str, title: str, context: str) -> str:
    """Recover a reusable template from a concrete prompt built for (title, context).

    The single occurrence of ``"{title}\\n{context}"`` in ``prompt`` becomes the ``{title}``/``{context}`` slots and
    literal braces elsewhere are escaped, so ``template.format(title=title, context=context) == prompt``. Used to
    reproduce a stored self-edit file's generation prompt byte for byte on other passages.
    """
    block = f"{title}\n{context}"
    count = prompt.count(block)
    if count != 1:
        raise ValueError(f"template_from_prompt: the title+context block occurs {count} times in the prompt "
                         "(expected exactly once)")
    before, after = prompt.split(block)

    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    return f"{escape(before)}{_PASSAGE_BLOCK}{escape(after)}"


def topic_question(title: str, question: str) -> str:
    """The question text the drivers send: ``"Topic: {title}\\n{question}"``."""
    return f"Topic: {title}\n{question}"


def format_answer_prompt(title: str, question: str, template: str = ANSWER_TEMPLATE) -> str:
    """The exact answering prompt for one question of a passage titled ``title`` (topic line included)."""
    return template.format(question=topic_question(title, question))


def format_answer_prompts(passage: Passage, template: str = ANSWER_TEMPLATE) -> list[str]:
    """Answering prompts for all questions of ``passage``, in order."""
    return [format_answer_prompt(passage.title, q.question, template) for q in passage.questions]


# Our wording of the system message for answering with an instruct model (the original's instruct branch, unused in
# its runs, has its own: `--prompts` brings it).
INSTRUCT_ANSWER_SYSTEM = "Answer the question directly and concisely."


@dataclass(frozen=True)
class PromptFormat:
    """How the knowledge prompts become model input: a base model's plain text (the default: the original's
    setting, Qwen2.5-7B base) or an instruct model's chat turns (the original's ``--instruct_model`` branch).

    instruct=False: self-edit prompts from `PROMPT_VARIANTS` (or ``self_edit_template``, e.g. the original's from
    `--prompts`), answer prompts from ``answer_template`` (default `ANSWER_TEMPLATE`, the original's); generation
    stops at eos only. instruct=True: without templates, a system turn (the variant's request / `INSTRUCT_ANSWER_SYSTEM`)
    and a user turn (``{title}\n{context}`` / the topic and question, as the original's instruct strings) rendered with
    the tokenizer's chat template; with templates (the original's Qwen-instruct strings, which carry the ChatML markup
    themselves) those; generation also stops at the end-of-turn tokens (``<|im_end|>``, ``<|eot_id|>``)."""

    instruct: bool = False
    self_edit_template: str | None = None  # {title} and {context}
    answer_template: str | None = None  # {question} (the topic line and the question)

    def self_edit_prompt(self, passage: Passage, variant: str, tokenizer=None) -> str:
        """The text the policy continues to write a self-edit for ``passage``."""
        if self.self_edit_template is not None or not self.instruct:
            return format_self_edit_prompt(passage, variant, template=self.self_edit_template)
        if variant not in PROMPT_VARIANTS:
            format_self_edit_prompt(passage, variant)  # the unknown-variant error
        return tokenizer.chat_prompt_text([{"role": "system", "content": PROMPT_VARIANTS[variant].instruction},
                                           {"role": "user", "content": f"{passage.title}\n{passage.context}"}])

    def answer_prompts(self, passage: Passage, tokenizer=None) -> list[str]:
        """The answering prompt of each of ``passage``'s questions (topic line included), in order."""
        if self.answer_template is not None or not self.instruct:
            return format_answer_prompts(passage, self.answer_template or ANSWER_TEMPLATE)
        return [tokenizer.chat_prompt_text([{"role": "system", "content": INSTRUCT_ANSWER_SYSTEM},
                                            {"role": "user", "content": topic_question(passage.title, q.question)}])
                for q in passage.questions]

    def encode(self, tokenizer, text: str) -> list[int]:
        """Token ids of a prompt: a base prompt gets the tokenizer's bos (none for Qwen); a chat already holds it."""
        return list(tokenizer.encode(text, add_bos=not self.instruct))

    def stop_ids(self, tokenizer) -> list[int]:
        """Where generation stops: eos; an instruct model also at its end-of-turn tokens (the tokenizer's stops)."""
        if self.instruct:
            return list(tokenizer.stop_token_ids)
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
