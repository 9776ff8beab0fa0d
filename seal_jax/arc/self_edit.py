"""ARC self-edits: the prompt that asks the policy for a training configuration, and a robust parser for its reply.

Prompt (spec section 1.2; our wording, the original's structure): a one-sentence system message asking for the
answer straight away; a user turn made of every demonstration pair (``Input:``, rows, blank line, ``Output:``,
rows, blank line, `grids.self_edit_demonstrations_text`), a separator line of six dashes and a blank line, then the
instruction block `SELF_EDIT_INSTRUCTION` (act as the configurator of a training pipeline; choose true/false for the
four augmentation families, one of the two loss strategies, a float learning rate and an integer epoch count; reply
with a bare JSON object in the shape of the skeleton shown). The test input is not shown. `self_edit_prompt` builds
the original's hand-written Llama-3 chat string; `self_edit_messages` gives the same turns for a chat template.

Reply format (`SelfEditConfig.to_dict`)::

    {"data_generation": {"use_basic_augmentations": bool, "use_size_augmentations": bool,
                         "use_chain_augmentations": bool, "use_repeat_augmentations": bool},
     "training": {"strategy": "train_using_all_tokens" | "train_using_output_tokens",
                  "learning_rate": float, "num_train_epochs": int}}

Our extension: ``data_generation`` may also hold ``"augmenters": [names]`` (registry names of `augment`, added after
the families' augmenters).

`parse_self_edit(text)` returns a validated `SelfEditConfig` or raises `SelfEditError` (a ValueError) with the
reason, for every str input, in time linear in the input (bounded by `MAX_TEXT_CHARS`). It accepts what models
produce around the object (code fences, prose before or after, several objects: the first one holding a
``data_generation`` or ``training`` section is used), JSON or Python-literal syntax (single quotes,
True/False, trailing commas, ``//`` or ``#`` comments), keys in any case with spaces or hyphens for underscores,
numbers written as strings, integral floats for epochs, and booleans written as true/false/yes/no/1/0 (also as
strings: unlike the original, the string "false" is false). It rejects: no object, truncated or unparsable
objects, missing sections or fields, unknown fields, unknown augmenter families or names, a strategy outside the
two, a non-numeric, non-finite, non-positive or too large learning rate, and a non-integral, negative or too large
epoch count (limits in `SelfEditLimits`).

The original's step budget (``epochs * n_sequences // 2 > 375`` -> 0 epochs) depends on the TTT data size and is
`SelfEditConfig.budgeted_epochs`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import warnings
from typing import Any, Sequence

from seal_jax.arc.augment import SELF_EDIT_FAMILIES, AugmentError, Augmenter, augmenters_for, get_augmenter
from seal_jax.arc.grids import self_edit_demonstrations_text

__all__ = ["DEFAULT_LIMITS", "LOSS_STRATEGIES", "MAX_TEXT_CHARS", "SAMPLING", "SELF_EDIT_INSTRUCTION",
           "SELF_EDIT_SEPARATOR", "SELF_EDIT_SYSTEM_MESSAGE", "SelfEditConfig", "SelfEditError", "SelfEditLimits",
           "parse_self_edit", "parse_self_edit_original",
           "self_edit_messages", "self_edit_prompt", "self_edit_user_text"]

LOSS_STRATEGIES = ("train_using_all_tokens", "train_using_output_tokens")
FLAG_KEYS = tuple(f"use_{fam}_augmentations" for fam in SELF_EDIT_FAMILIES)
TRAINING_KEYS = ("strategy", "learning_rate", "num_train_epochs")

MAX_TEXT_CHARS = 100_000  # longer replies are rejected outright (the original samples at most 128 tokens)
_MAX_CANDIDATES = 16  # '{' positions tried as the start of an object
_MAX_LITERAL_CHARS = 20_000  # Python-literal fallback only for objects up to this size

SELF_EDIT_SYSTEM_MESSAGE = "Reply at once with the correct output and nothing before it."
SELF_EDIT_SEPARATOR = "------\n\n"
SELF_EDIT_INSTRUCTION = """
You are setting up a model training pipeline by picking from a fixed set of tools.

Make two choices:

1. **Training data tools** — answer true or false for each of:
    - use_basic_augmentations
    - use_size_augmentations
    - use_chain_augmentations
    - use_repeat_augmentations

2. **Training setup** — pick one of:
    - "train_using_all_tokens"
    - "train_using_output_tokens"

Also give:
    - learning_rate (float)
    - num_train_epochs (integer)

### Reply format

""" + ("Reply with one valid JSON object and nothing else: no explanation, no markdown, no extra text. "
       "Write booleans as lowercase `true`/`false` and keep the JSON syntax correct.") + """

Shape of the reply:

{
  "data_generation": {
    "use_basic_augmentations": ...,
    "use_size_augmentations": ...,
    "use_chain_augmentations": ...,
    "use_repeat_augmentations": ...
  },
  "training": {
    "strategy": ...,
    "learning_rate": ...,
    "num_train_epochs": ...
  }
}
"""


class SelfEditError(ValueError):
    """A self-edit reply that does not hold a valid configuration; the message says why."""


@dataclasses.dataclass(frozen=True)
class SelfEditLimits:
    """Plausibility bounds applied by `parse_self_edit` (a reply outside them is an error, not a config)."""

    max_learning_rate: float = 1e-2
    max_epochs: int = 1000


DEFAULT_LIMITS = SelfEditLimits()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class SelfEditConfig:
    """One self-edit: which augmentation families build the TTT data, and how the adapter is trained.

    Construction validates structure (types, strategy, positive finite learning rate, non-negative integer epochs,
    known augmenter names) and raises `SelfEditError`; the plausibility limits are `parse_self_edit`'s."""

    use_basic_augmentations: bool
    use_size_augmentations: bool
    use_chain_augmentations: bool
    use_repeat_augmentations: bool
    strategy: str
    learning_rate: float
    num_train_epochs: int
    augmenters: tuple[str, ...] = ()  # extra augmenters by registry name (our extension)

    def __post_init__(self):
        for key in FLAG_KEYS:
            if not isinstance(getattr(self, key), bool):
                raise SelfEditError(f"{key} must be a bool, got {getattr(self, key)!r}")
        if self.strategy not in LOSS_STRATEGIES:
            raise SelfEditError(f"strategy must be one of {', '.join(LOSS_STRATEGIES)}, got {self.strategy!r}")
        if not _is_number(self.learning_rate) or not math.isfinite(self.learning_rate) or self.learning_rate < 0 \
                or (self.learning_rate == 0 and self.num_train_epochs != 0):
            raise SelfEditError(f"learning_rate must be a positive finite number (0 only with 0 epochs), got "
                                f"{self.learning_rate!r}")
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        if not isinstance(self.num_train_epochs, int) or isinstance(self.num_train_epochs, bool) \
                or self.num_train_epochs < 0:
            raise SelfEditError(f"num_train_epochs must be a non-negative int, got {self.num_train_epochs!r}")
        if not isinstance(self.augmenters, tuple):
            raise SelfEditError(f"augmenters must be a tuple of names, got {type(self.augmenters).__name__}")
        names = []
        for name in self.augmenters:
            try:
                canonical = get_augmenter(name).name
            except AugmentError as e:
                raise SelfEditError(str(e)) from None
            if canonical not in names:
                names.append(canonical)
        object.__setattr__(self, "augmenters", tuple(names))

    @property
    def families(self) -> tuple[str, ...]:
        """The enabled augmentation families, in the original's order."""
        return tuple(fam for fam, key in zip(SELF_EDIT_FAMILIES, FLAG_KEYS) if getattr(self, key))

    @property
    def loss_on_output_only(self) -> bool:
        """True for ``train_using_output_tokens`` (loss on the answer only), False for all tokens."""
        return self.strategy == "train_using_output_tokens"

    def augmenter_list(self) -> tuple[Augmenter, ...]:
        """The augmenters this self-edit enables: the families' (original order, at most 23), then the extras."""
        base = augmenters_for(basic=self.use_basic_augmentations, size=self.use_size_augmentations,
                              chain=self.use_chain_augmentations, repeat=self.use_repeat_augmentations)
        names = [a.name for a in base]
        return base + tuple(get_augmenter(n) for n in self.augmenters if n not in names)

    def total_steps(self, n_sequences: int, batch_size: int = 2) -> int:
        """Optimizer steps of the original's Trainer: epochs * ceil(n / batch) (last partial batch kept)."""
        return self.num_train_epochs * -(-n_sequences // batch_size)

    def budgeted_epochs(self, n_sequences: int, batch_size: int = 2, max_steps: int = 375) -> int:
        """The original's step budget (spec section 1.3): the epochs, or 0 when
        ``epochs * n_sequences // batch_size > max_steps``."""
        return 0 if self.num_train_epochs * n_sequences // batch_size > max_steps else self.num_train_epochs

    def to_dict(self) -> dict[str, Any]:
        """The reply format (the original's JSON shape; ``augmenters`` only when non-empty)."""
        dg: dict[str, Any] = {key: getattr(self, key) for key in FLAG_KEYS}
        if self.augmenters:
            dg["augmenters"] = list(self.augmenters)
        return {"data_generation": dg, "training": {"strategy": self.strategy, "learning_rate": self.learning_rate,
                                                    "num_train_epochs": self.num_train_epochs}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SelfEditConfig":
        """The inverse of `to_dict` (a stored configuration; validated, but not parsed leniently)."""
        try:
            dg, tr = d["data_generation"], d["training"]
            return cls(**{key: dg[key] for key in FLAG_KEYS}, strategy=tr["strategy"],
                       learning_rate=tr["learning_rate"], num_train_epochs=tr["num_train_epochs"],
                       augmenters=tuple(dg.get("augmenters", ())))
        except (KeyError, TypeError) as e:
            raise SelfEditError(f"not a stored configuration ({e!r})") from None

    def to_json(self) -> str:
        """Canonical JSON text (a stable cache key for identical configurations)."""
        return json.dumps(self.to_dict(), sort_keys=True)


# ----------------------------------------------------------------------------------------------------- the prompt

def _demonstrations(task_or_pairs: Any) -> Sequence[Any]:
    return task_or_pairs.train if hasattr(task_or_pairs, "train") else task_or_pairs


def self_edit_user_text(task_or_pairs: Any, instruction: str = SELF_EDIT_INSTRUCTION) -> str:
    """The user turn: demonstrations, separator, instruction block. Accepts an `ArcTask` (its demonstrations) or a
    sequence of (input, output) pairs. `instruction`: the block's wording (the original's from `--prompts`)."""
    return self_edit_demonstrations_text(_demonstrations(task_or_pairs)) + SELF_EDIT_SEPARATOR + instruction


def self_edit_messages(task_or_pairs: Any, instruction: str = SELF_EDIT_INSTRUCTION,
                       system: str = SELF_EDIT_SYSTEM_MESSAGE) -> list[dict[str, str]]:
    """System and user messages of the self-edit prompt, for a chat template."""
    return [{"role": "system", "content": system},
            {"role": "user", "content": self_edit_user_text(task_or_pairs, instruction)}]


def self_edit_prompt(task_or_pairs: Any, bos: str = "<|begin_of_text|>", instruction: str = SELF_EDIT_INSTRUCTION,
                     system: str = SELF_EDIT_SYSTEM_MESSAGE) -> str:
    """The original's hand-built Llama-3 prompt string (no chat template, no date preamble), ending with the
    assistant header. A tokenizer that adds its own BOS will double it, as the original's vLLM call did."""
    def turn(role: str, content: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"
    return (bos + turn("system", system) + turn("user", self_edit_user_text(task_or_pairs, instruction))
            + "<|start_header_id|>assistant<|end_header_id|>\n\n")


# ------------------------------------------------------------------------------------------------------ the parser

def _snippet(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the '}' closing the '{' at `start`, skipping quoted strings (a single-quoted string also ends at a
    newline, so an apostrophe in prose cannot swallow the rest); None when unbalanced. Linear in the text."""
    depth = 0
    quote = ""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote or (c == "\n" and quote == "'"):
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _candidates(text: str) -> list[str | None]:
    """Balanced ``{...}`` spans in order of their start (None for an unclosed one), at most `_MAX_CANDIDATES`."""
    out: list[str | None] = []
    start = text.find("{")
    while start >= 0 and len(out) < _MAX_CANDIDATES:
        end = _closing_brace(text, start)
        out.append(None if end is None else text[start:end + 1])
        start = text.find("{", start + 1 if end is None else end + 1)
    return out


_PY_WORDS = {"true": "True", "false": "False", "null": "None"}


def _pythonise(text: str) -> str:
    """JSON-ish text -> Python literal source: bare true/false/null become True/False/None and ``//`` comments
    become ``#`` comments, outside quoted strings. Linear."""
    out = []
    quote = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == quote or c == "\n":
                quote = ""
            i += 1
        elif c in "\"'":
            quote = c
            out.append(c)
            i += 1
        elif c == "/" and text.startswith("//", i):
            out.append("#")
            i += 2
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            out.append(_PY_WORDS.get(word, word))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _load_object(candidate: str) -> Any:
    """Parse one ``{...}`` span as JSON, else as a Python literal; SelfEditError when neither works."""
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError) as e:
        reason = f"invalid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else f"invalid JSON ({e})"
    if len(candidate) > _MAX_LITERAL_CHARS:
        raise SelfEditError(f"{reason} in an object of {len(candidate)} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in model text
            return ast.literal_eval(_pythonise(candidate))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError):
        raise SelfEditError(f"{reason} in {_snippet(candidate)}") from None


def _norm_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise SelfEditError(f"{where}: key {key!r} is not a string")
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _normalised(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SelfEditError(f"{where} must be an object, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        k = _norm_key(key, where)
        if k in out:
            raise SelfEditError(f"{where}: duplicate key {k!r}")
        out[k] = value
    return out


def _has_section(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(k, str) and _norm_key(k, "") in ("data_generation", "training")
                                         for k in obj)


_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}(?:\.0*)?")  # 18 digits: far above any limit, far below int() limits


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise SelfEditError(f"{key} must be true or false, got {_snippet(repr(value), 40)}")


def _as_learning_rate(value: Any, limits: SelfEditLimits) -> float:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value.strip())
    if not _is_number(value):
        raise SelfEditError(f"learning_rate must be a number, got {_snippet(repr(value), 40)}")
    try:
        lr = float(value)
    except OverflowError:
        raise SelfEditError("learning_rate is too large to be a float") from None
    if not math.isfinite(lr):
        raise SelfEditError(f"learning_rate must be finite, got {lr}")
    if lr <= 0:
        raise SelfEditError(f"learning_rate must be positive, got {lr:g}")
    if lr > limits.max_learning_rate:
        raise SelfEditError(f"learning_rate {lr:g} exceeds the limit {limits.max_learning_rate:g}")
    return lr


def _as_epochs(value: Any, limits: SelfEditLimits) -> int:
    if isinstance(value, str):
        v = value.strip()
        if not _INT_TEXT.fullmatch(v):
            raise SelfEditError(f"num_train_epochs must be a whole number, got {_snippet(repr(value), 40)}")
        value = int(v.split(".")[0])
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise SelfEditError(f"num_train_epochs must be a whole number, got {value:g}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SelfEditError(f"num_train_epochs must be an integer, got {_snippet(repr(value), 40)}")
    if value < 0:
        raise SelfEditError(f"num_train_epochs must be non-negative, got {value}")
    if value > limits.max_epochs:
        raise SelfEditError(f"num_train_epochs {value} exceeds the limit {limits.max_epochs}")
    return value


def _as_strategy(value: Any) -> str:
    if isinstance(value, str):
        v = re.sub(r"[\s\-]+", "_", value.strip().lower())
        for s in LOSS_STRATEGIES:
            if v in (s, s.removeprefix("train_using_")):
                return s
    raise SelfEditError(f"strategy must be one of {', '.join(LOSS_STRATEGIES)}, got {_snippet(repr(value), 40)}")


def _as_augmenter_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SelfEditError(f"augmenters must be a list of names, got {_snippet(repr(value), 40)}")
    try:
        return tuple(get_augmenter(v.strip()).name for v in value)
    except AugmentError as e:
        raise SelfEditError(str(e)) from None


def _config_from_object(obj: Any, limits: SelfEditLimits) -> SelfEditConfig:
    top = _normalised(obj, "the reply")
    for key in top:
        if key not in ("data_generation", "training"):
            raise SelfEditError(f"unknown top-level field {key!r} (expected data_generation and training)")
    for section in ("data_generation", "training"):
        if section not in top:
            raise SelfEditError(f"missing {section!r} section")
    dg = _normalised(top["data_generation"], "data_generation")
    tr = _normalised(top["training"], "training")

    for key in dg:
        if key in FLAG_KEYS or key == "augmenters":
            continue
        fam = re.fullmatch(r"use_(.+)_augmentations?", key)
        if fam:
            raise SelfEditError(f"unknown augmenter family {fam.group(1)!r} in data_generation "
                                f"(known: {', '.join(SELF_EDIT_FAMILIES)})")
        raise SelfEditError(f"unknown data_generation field {key!r}")
    for key in FLAG_KEYS:
        if key not in dg:
            raise SelfEditError(f"data_generation is missing {key!r}")
    for key in tr:
        if key not in TRAINING_KEYS:
            raise SelfEditError(f"unknown training field {key!r}")
    for key in TRAINING_KEYS:
        if key not in tr:
            raise SelfEditError(f"training is missing {key!r}")

    flags = {key: _as_bool(dg[key], key) for key in FLAG_KEYS}
    extras = _as_augmenter_names(dg["augmenters"]) if "augmenters" in dg else ()
    return SelfEditConfig(**flags, strategy=_as_strategy(tr["strategy"]),
                          learning_rate=_as_learning_rate(tr["learning_rate"], limits),
                          num_train_epochs=_as_epochs(tr["num_train_epochs"], limits), augmenters=extras)


SAMPLING = ("clean", "original")


def parse_self_edit_original(text: str) -> SelfEditConfig:
    """A reply read the way the original reads it (spec sections 1.2-1.3; ``--self-edit-sampling original``).

    ``json.loads`` of the whole reply: anything else (code fences, prose, a truncated object) raises `SelfEditError`
    and the original resamples. A document that is not an object with ``data_generation`` and ``training`` objects
    also raises (the original crashes on it while building its de-duplication key). Then the original's fallbacks
    instead of errors: any of the four augmentation booleans missing -> no augmentation and 0 epochs; any of
    strategy / learning_rate / num_train_epochs missing -> 0 epochs, all-token loss, learning rate 0; a strategy
    other than the two -> 0 epochs; booleans by truthiness (the string "false" is true). A 0-epoch configuration
    takes no optimiser step, so its adapter is the untrained one. Values the original would hand to its trainer
    unchecked (a non-numeric learning rate, a fractional or negative epoch count) raise, as its trainer would."""
    if not isinstance(text, str):
        raise SelfEditError(f"expected the reply as str, got {type(text).__name__}")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise SelfEditError(f"the reply is not a JSON document (the original resamples): {_snippet(text)}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data_generation"), dict) \
            or not isinstance(obj.get("training"), dict):
        raise SelfEditError("no data_generation and training objects (the original crashes on this reply)")
    dg, tr = obj["data_generation"], obj["training"]
    zero = False
    if all(key in dg for key in FLAG_KEYS):
        flags = {key: bool(dg[key]) for key in FLAG_KEYS}
    else:
        flags, zero = {key: False for key in FLAG_KEYS}, True
    if all(key in tr for key in TRAINING_KEYS):
        strategy, lr, epochs = tr["strategy"], tr["learning_rate"], tr["num_train_epochs"]
    else:
        strategy, lr, epochs, zero = LOSS_STRATEGIES[0], 0.0, 0, True
    if strategy not in LOSS_STRATEGIES:
        strategy, zero = LOSS_STRATEGIES[0], True
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise SelfEditError(f"learning_rate {_snippet(repr(lr), 40)} would fail the original's trainer")
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise SelfEditError(f"num_train_epochs {_snippet(repr(epochs), 40)} is not a whole number of epochs")
    if zero or lr == 0:  # (a zero learning rate trains nothing either way)
        epochs = 0
    return SelfEditConfig(**flags, strategy=strategy, learning_rate=float(lr), num_train_epochs=epochs)


def repeat_key(text: str, config: SelfEditConfig | None, sampling: str = "clean") -> str | None:
    """The de-duplication key of a parsed reply for ``--skip-repeated-configs`` (None for an unparsed one).

    original: the original's key, the reply's raw ``data_generation`` and ``training`` objects with their items
    sorted (so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` repeat, while a reply that adds any field, or writes
    ``1e-4`` as ``0.0001`` only after json.loads has made them equal, is new). clean: the parsed configuration
    (`SelfEditConfig.to_json`), so two replies that configure the same training are repeats however worded."""
    if config is None:
        return None
    if sampling == "original":
        obj = json.loads(text)
        return json.dumps([sorted(obj["data_generation"].items()), sorted(obj["training"].items())])
    return config.to_json()


def first_unrepeated(replies: Sequence[tuple[str, SelfEditConfig | None]], seen: set[str],
                     sampling: str = "clean") -> list[bool]:
    """Which of one task's replies, taken in order, are kept under ``--skip-repeated-configs``: an unparsed reply is
    not (it is resampled anyway), nor is a configuration already in ``seen`` or earlier in ``replies`` (the original
    resamples it). Kept keys are added to ``seen``."""
    keep = []
    for text, config in replies:
        key = repeat_key(text, config, sampling)
        keep.append(key is not None and key not in seen)
        if keep[-1]:
            seen.add(key)
    return keep


def parse_self_edit(text: str, limits: SelfEditLimits = DEFAULT_LIMITS) -> SelfEditConfig:
    """Parse a model's self-edit reply into a `SelfEditConfig`; raise `SelfEditError` saying why otherwise.

    The first balanced ``{...}`` that parses (JSON, else Python literal) to an object with a ``data_generation`` or
    ``training`` section is validated; when there is none, the error is that of the first candidate object."""
    if not isinstance(text, str):
        raise SelfEditError(f"expected the reply as str, got {type(text).__name__}")
    if not text.strip():
        raise SelfEditError("empty reply")
    if len(text) > MAX_TEXT_CHARS:
        raise SelfEditError(f"reply of {len(text)} characters exceeds {MAX_TEXT_CHARS}")
    candidates = _candidates(text)
    if not candidates:
        raise SelfEditError(f"no JSON object in the reply {_snippet(text)}")
    first_error: SelfEditError | None = None
    for candidate in candidates:
        try:
            if candidate is None:
                raise SelfEditError("truncated JSON object (unbalanced braces)")
            obj = _load_object(candidate)
            if not _has_section(obj):
                raise SelfEditError("missing 'data_generation' and 'training' sections")
        except SelfEditError as e:
            first_error = first_error or e
            continue
        return _config_from_object(obj, limits)
    raise first_error
