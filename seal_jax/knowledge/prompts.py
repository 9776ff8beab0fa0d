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

    def format(self, title: str, context: str) -> str:
        """The generation prompt for one passage."""
        return self.template.format(title=title, context=context)


def _layout(instruction: str, header: str) -> str:
    """Instruction, blank line, ``Passage:``, title, context, blank line, header (the original's layout)."""
    return f"{instruction}\n\nPassage:\n{_PASSAGE_BLOCK}\n\n{header}"


_IMPLICATIONS_HEADER = "Implications:\n"

PROMPT_VARIANTS: Mapping[str, PromptVariant] = MappingProxyType({
    v.name: v for v in (
        PromptVariant(
            "implications",
            "a list of implications of the passage (the main SEAL setting)",
            _layout("Read the passage below and write a list of the implications that can be drawn from it, "
                    "both direct and indirect.", _IMPLICATIONS_HEADER)),
        PromptVariant(
            "implications-long",
            "the same request for a long list of implications",
            _layout("Read the passage below and write a long list of the implications that can be drawn from it, "
                    "both direct and indirect.", _IMPLICATIONS_HEADER)),
        PromptVariant(
            "implications-very-long",
            "the same request for a very long list of implications",
            _layout("Read the passage below and write a very long list of the implications that can be drawn "
                    "from it, both direct and indirect.", _IMPLICATIONS_HEADER)),
        PromptVariant(
            "rewrite",
            "several alternative rewrites of the passage, one per line",
            _layout("Read the passage below and restate it in several different ways, writing each version on "
                    "its own line.", "Rewritten passages:\n")),
        PromptVariant(
            "self-qa",
            "the passage restated as question-answer pairs; the prompt ends inside the first question",
            _layout("Read the passage below and restate what it says as a series of questions, each followed by "
                    "its answer.", "Question 1: ")),
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


def format_answer_prompt(title: str, question: str) -> str:
    """The exact answering prompt for one question of a passage titled ``title`` (topic line included)."""
    return ANSWER_TEMPLATE.format(question=topic_question(title, question))


def format_answer_prompts(passage: Passage) -> list[str]:
    """Answering prompts for all questions of ``passage``, in order."""
    return [format_answer_prompt(passage.title, q.question) for q in passage.questions]
