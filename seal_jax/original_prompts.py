"""The original SEAL prompts, read from a user's own checkout of the original repository (never shipped here).

seal-jax words its prompts itself (the answer prompt excepted: it is scored against, so it is the original's).
For an exact reproduction, `import_from_checkout(ROOT)` reads the original's prompt strings out of the checkout's
Python sources (with `ast`: nothing is imported or executed), `save` writes them to a prompts file, and every
experiment's `--prompts FILE` uses them (`load`):

    key                          where, in the original checkout
    knowledge_self_edit          general-knowledge/src/data_generation/make_squad_data.py  MAKE_SQUAD_DATA_TEMPLATES_BASE
                                 (a dict: prompt variant -> template with {title} and {context})
    knowledge_answer             general-knowledge/src/utils.py  SQUAD_ANSWER_TEMPLATE_BASE  ({question})
    grade                        general-knowledge/src/utils.py  SQUAD_GRADE_TEMPLATE  ({question}, {gold}, {pred})
    arc_self_edit_instruction    few-shot/utils/prompts.py  self_edit_prompt
    arc_system_message           few-shot/utils/prompts.py  system_message
    arc_ttt_instruction          few-shot/arclib/messagers.py  GPTTextMessageRepresenterV2.__init__'s default
                                 `prompt`, with its {description} slot empty (ARC tasks carry no description)

and, where the checkout has them, the strings of the original's `--instruct_model` branch (its runs never use it;
`--instruct-model` does): knowledge_self_edit_instruct (make_squad_data.py MAKE_SQUAD_DATA_TEMPLATE_INSTRUCT),
knowledge_answer_instruct (utils.py SQUAD_ANSWER_TEMPLATE_QWEN_INSTRUCT) and grade_instruct (utils.py
SQUAD_GRADE_TEMPLATE_QWEN_INSTRUCT), Qwen ChatML written out in the strings.

    python -m experiments.import_seal_prompts PATH_TO_SEAL_CHECKOUT --out prompts.json
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import Any

__all__ = ["OPTIONAL_SOURCES", "PromptsError", "SOURCES", "SealPrompts", "import_from_checkout", "load", "save"]


class PromptsError(ValueError):
    """A prompts file or checkout that cannot provide the original's prompts (the message names what and where)."""


# key -> (path in the checkout, (class name or None, variable / argument name))
SOURCES: dict[str, tuple[str, tuple[str | None, str]]] = {
    "knowledge_self_edit": ("general-knowledge/src/data_generation/make_squad_data.py",
                            (None, "MAKE_SQUAD_DATA_TEMPLATES_BASE")),
    "knowledge_answer": ("general-knowledge/src/utils.py", (None, "SQUAD_ANSWER_TEMPLATE_BASE")),
    "grade": ("general-knowledge/src/utils.py", (None, "SQUAD_GRADE_TEMPLATE")),
    "arc_self_edit_instruction": ("few-shot/utils/prompts.py", (None, "self_edit_prompt")),
    "arc_system_message": ("few-shot/utils/prompts.py", (None, "system_message")),
    "arc_ttt_instruction": ("few-shot/arclib/messagers.py", ("GPTTextMessageRepresenterV2", "prompt")),
}
# Imported when the checkout has them (the original's unused instruct-model branch).
OPTIONAL_SOURCES: dict[str, tuple[str, tuple[str | None, str]]] = {
    "knowledge_self_edit_instruct": ("general-knowledge/src/data_generation/make_squad_data.py",
                                     (None, "MAKE_SQUAD_DATA_TEMPLATE_INSTRUCT")),
    "knowledge_answer_instruct": ("general-knowledge/src/utils.py", (None, "SQUAD_ANSWER_TEMPLATE_QWEN_INSTRUCT")),
    "grade_instruct": ("general-knowledge/src/utils.py", (None, "SQUAD_GRADE_TEMPLATE_QWEN_INSTRUCT")),
}
# Placeholders each template must hold (checked on load, so a wrong file fails before any work).
_SLOTS = {"knowledge_self_edit": ("{title}", "{context}"), "knowledge_answer": ("{question}",),
          "grade": ("{question}", "{gold}", "{pred}"), "knowledge_self_edit_instruct": ("{title}", "{context}"),
          "knowledge_answer_instruct": ("{question}",), "grade_instruct": ("{question}", "{gold}", "{pred}")}


@dataclasses.dataclass(frozen=True)
class SealPrompts:
    knowledge_self_edit: dict[str, str]
    knowledge_answer: str
    grade: str
    arc_self_edit_instruction: str
    arc_system_message: str
    arc_ttt_instruction: str
    knowledge_self_edit_instruct: str | None = None
    knowledge_answer_instruct: str | None = None
    grade_instruct: str | None = None

    def instruct(self, key: str) -> str:
        """One of the instruct-model strings; an error naming it when the prompts file has none."""
        value = getattr(self, key)
        if value is None:
            raise PromptsError(f"the prompts file has no {key} (--instruct-model with --prompts needs the "
                               f"original's {OPTIONAL_SOURCES[key][1][1]}; re-import from a checkout that has it)")
        return value

    def self_edit_template(self, variant: str) -> str:
        try:
            return self.knowledge_self_edit[variant]
        except KeyError:
            raise PromptsError(f"the prompts file has no knowledge self-edit prompt {variant!r} (it has: "
                               f"{', '.join(sorted(self.knowledge_self_edit))})") from None


def _module_value(tree: ast.Module, name: str, path: str) -> Any:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise PromptsError(f"{path}: {name} is not a literal string or dict") from None
    raise PromptsError(f"{path}: no module-level {name} (is this a checkout of the original SEAL repository?)")


def _init_default(tree: ast.Module, cls: str, arg: str, path: str) -> Any:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    args = fn.args.args[len(fn.args.args) - len(fn.args.defaults):]
                    for a, default in zip(args, fn.args.defaults):
                        if a.arg == arg:
                            return ast.literal_eval(default)
            raise PromptsError(f"{path}: {cls}.__init__ has no default for {arg!r}")
    raise PromptsError(f"{path}: no class {cls}")


def import_from_checkout(root: str) -> dict[str, Any]:
    """The original's prompt strings from a checkout at `root` (see the module docstring for where each lives)."""
    if not os.path.isdir(root):
        raise PromptsError(f"{root} is not a directory")
    out: dict[str, Any] = {}
    trees: dict[str, ast.Module] = {}
    for key, (rel, (cls, name)) in SOURCES.items():
        path = os.path.join(root, rel)
        if rel not in trees:
            try:
                with open(path, encoding="utf-8") as f:
                    trees[rel] = ast.parse(f.read(), filename=path)
            except FileNotFoundError:
                raise PromptsError(f"{path} does not exist (is {root} a checkout of the original SEAL "
                                   f"repository?)") from None
            except SyntaxError as e:
                raise PromptsError(f"{path} does not parse as Python ({e.msg}, line {e.lineno})") from None
        value = (_module_value(trees[rel], name, path) if cls is None
                 else _init_default(trees[rel], cls, name, path))
        if key == "arc_ttt_instruction" and isinstance(value, str):
            value = value.replace("{description}", "")  # tasks carry no description (the original formats "")
        out[key] = value
    for key, (rel, (_, name)) in OPTIONAL_SOURCES.items():  # files already parsed above
        try:
            out[key] = _module_value(trees[rel], name, os.path.join(root, rel))
        except PromptsError as e:
            if "no module-level" not in str(e):
                raise
    _validate(out, root)
    return out


def _validate(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise PromptsError(f"{source}: a prompts file is a JSON object with the keys {', '.join(SOURCES)}")
    missing = [k for k in SOURCES if k not in data]
    if missing:
        raise PromptsError(f"{source}: missing prompt(s) {', '.join(missing)}")
    for key in [*SOURCES, *(k for k in OPTIONAL_SOURCES if data.get(k) is not None)]:
        value = data[key]
        if key == "knowledge_self_edit" and (not isinstance(value, dict) or not value):
            raise PromptsError(f"{source}: {key} must map prompt variants to templates")
        for text in (value.values() if key == "knowledge_self_edit" else [value]):
            if not isinstance(text, str) or not text:
                raise PromptsError(f"{source}: {key} must be a non-empty string")
            lacking = [s for s in _SLOTS.get(key, ()) if s not in text]
            if lacking:
                raise PromptsError(f"{source}: {key} lacks the placeholder(s) {', '.join(lacking)}")


def save(prompts: dict[str, Any], path: str) -> None:
    from seal_jax.runs import write_json
    write_json(path, prompts)


def load(path: str) -> SealPrompts:
    """A prompts file written by `save` / `experiments.import_seal_prompts`, validated."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PromptsError(f"prompts file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PromptsError(f"prompts file {path} is not valid JSON ({e})") from None
    _validate(data, path)
    return SealPrompts(**{k: data[k] for k in SOURCES}, **{k: data.get(k) for k in OPTIONAL_SOURCES})
