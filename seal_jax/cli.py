"""Command lines generated from frozen config dataclasses: the dataclass is the one source of truth for a flag's name,
type, default, choices, help and range, for the command line and for Python callers alike.

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Training:
        "test-time training"                        # the docstring's first line titles the flag group in --help
        lr: float = flag(1e-3, "learning rate", finite=True)
        epochs: int = flag(10, "passes over the data", minimum=0)
        schedule: Literal["constant", "linear"] = flag("linear", "learning-rate schedule")   # choices
        pack: bool = flag(False, "pack sequences into rows")   # --pack (a True default: --pack / --no-pack)

    add_flags(parser, Training)          # --lr, --epochs, --schedule, --pack (field name, "_" -> "-")
    cfg = build(Training, parser.parse_args(argv))
    problems(cfg)                        # [] or one-line messages: "--epochs must be at least 0, got -1"

A config composed of several groups is a dataclass inheriting from each (kw_only, so required fields may follow
defaulted ones); `add_flags` makes one argument group per base class that declares fields. `with_defaults` derives a
config whose defaults differ (a subcommand's), keeping every field's help and checks.

Why argparse underneath rather than a CLI-from-dataclass library: checked with tyro 1.0.17 (the registry's newest,
2026-12-02), a bad value (``--lr abc``, ``--schedule cosine``) prints a boxed multi-line panel, where the
project answers bad input with one line naming the flag (``error: PROG: ... (see --help)``,
tests/experiments/test_bad_input.py); and ``--fidelity original`` turns a set of defaults over while explicit
flags still win (`parse_with_preset`), which needs the parser's defaults, not only its result. What is written here
is the field -> argparse mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Literal, Sequence

__all__ = ["add_flags", "build", "flag", "flag_name", "problems", "with_defaults"]

REQUIRED = dataclasses.MISSING


def flag(default: Any = REQUIRED, help: str = "", *, minimum: int | None = None, finite: bool = False,
         int_list: bool = False, aliases: Sequence[str] = (), metavar: str | None = None) -> Any:
    """A config field that is also a command-line flag. ``minimum``: the value must be at least this; ``finite``: a
    finite number >= 0; ``int_list``: a comma-separated list of positive integers; ``aliases``: other flag spellings
    (the first name is always ``--field-name``)."""
    meta = dict(help=help, minimum=minimum, finite=finite, int_list=int_list, aliases=tuple(aliases),
                metavar=metavar)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _hints(cls) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(typing.get_type_hints(klass))
    return out


def _owner(cls, name: str):
    """The base class that first declares field `name` (its flag group)."""
    for klass in reversed(cls.__mro__):
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def _scalar(tp) -> tuple[Any, tuple | None]:
    """(element type, choices) of an annotation: Optional[X] -> X; Literal[...] -> choices."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    return tp, None


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of dataclass `cls`, in argument groups titled by the declaring classes' docstrings."""
    groups: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        owner = _owner(cls, f.name)
        title = (owner.__doc__ or owner.__name__).strip().splitlines()[0]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        g = groups[title]
        names = [flag_name(f.name), *meta.get("aliases", ())]
        kw: dict[str, Any] = dict(dest=f.name, help=meta.get("help") or None)
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tp = hints[f.name]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kw["default"] = default
        elif typing.get_origin(tp) in (list, tuple):
            kw.update(action="append", type=typing.get_args(tp)[0], default=list(default))
        else:
            elem, choices = _scalar(tp)
            kw.update(type=elem, choices=list(choices) if choices else None)
            if default is dataclasses.MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
        g.add_argument(*names, **kw)


def build(cls, args: argparse.Namespace | dict, **override):
    """The config `cls` from parsed flags (extra keys ignored; `override` wins)."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args, **override)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def problems(cfg) -> list[str]:
    """Range violations of a config's fields (one line each, naming the flag), from the fields' metadata."""
    out = []
    for f in dataclasses.fields(cfg):
        v, meta = getattr(cfg, f.name), f.metadata
        if v is None:
            continue
        low = meta.get("minimum")
        if low is not None and v < low:
            out.append(f"{flag_name(f.name)} must be at least {low}, got {v}")
        if meta.get("finite") and (not math.isfinite(v) or v < 0):
            out.append(f"{flag_name(f.name)} must be a finite number >= 0, got {v}")
        if meta.get("int_list"):
            parts = [x.strip() for x in (v or "").split(",") if x.strip()]
            if not all(x.isdigit() and int(x) > 0 for x in parts):
                out.append(f"{flag_name(f.name)} must be comma-separated positive integers, got {v!r}")
    return out


def with_defaults(cls, name: str | None = None, **defaults):
    """A subclass of config `cls` whose fields named in `defaults` default to the given values (help and checks
    kept): e.g. a subcommand that trains for 3 epochs where the others train for 10."""
    hints = _hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(defaults) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    fields = [(k, hints[k], dataclasses.field(default=v, metadata=by_name[k].metadata)) for k, v in defaults.items()]
    return dataclasses.make_dataclass(name or cls.__name__, fields, bases=(cls,), frozen=True, kw_only=True,
                                      namespace={"__doc__": cls.__doc__, "__module__": cls.__module__})


# ------------------------------------------------------------------------------------------------ shared flag groups
@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFlags:
    """model"""

    model: str | None = flag(None, "HF checkpoint dir (config.json + safetensors) of the policy")
    preset: str | None = flag(None, "a random-init preset instead of --model (smoke tests)")
    tokenizer: str | None = flag(None, "tokenizer dir (default: --model)")
    dtype: Literal["float32", "bfloat16"] = flag("bfloat16", "dtype of the base weights")
    allow_nonfinite_weights: bool = flag(False, "load a checkpoint whose weights hold nan or inf (debugging; "
                                                "refused by default)")
    seed: int = flag(0, "every sampling, shuffling, LoRA-init and TTT seed derives from it (the original used the "
                        "clock)")


def model_problems(cfg: ModelFlags) -> list[str]:
    if (cfg.model is None) == (cfg.preset is None):
        return ["give exactly one of --model DIR or --preset NAME"]
    if cfg.preset and not cfg.tokenizer:
        return ["--preset needs --tokenizer DIR"]
    return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshFlags:
    """devices"""

    mesh: str | None = flag(None, "ADAPTER,MODEL device mesh: the self-edit fine-tunes balanced over ADAPTER shards "
                                  "(the ragged engine's; --slots and --tokens-per-step are per shard), the base "
                                  "model split tensor-parallel over MODEL (default: one device)")


def mesh_problems(cfg: MeshFlags, devices: int | None = None) -> list[str]:
    """A malformed --mesh; with `devices` (known only once a multi-host run has joined its processes), also one
    larger than the run has."""
    if cfg.mesh is None:
        return []
    parts = cfg.mesh.split(",")
    if len(parts) != 2 or not all(x.strip().isdigit() and int(x) > 0 for x in parts):
        return [f"--mesh must be ADAPTER,MODEL (two positive integers), got {cfg.mesh!r}"]
    a, m = (int(x) for x in parts)
    if devices is not None and a * m > devices:
        return [f"--mesh {cfg.mesh} needs {a * m} devices, {devices} available"]
    return []


def place_model(cfg: MeshFlags, model):
    """(model, mesh): the mesh of --mesh and the model placed on it by the sharding rules, or (model, None)."""
    if not cfg.mesh:
        return model, None
    from seal_jax import distributed
    mesh = distributed.make_mesh(*(int(x) for x in cfg.mesh.split(",")))
    return distributed.shard_model(model, mesh), mesh


def split_names(text: str | None) -> tuple[str, ...]:
    """The names of a comma-separated flag value, stripped, empty parts dropped (``"q, v,"`` -> ``("q", "v")``)."""
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def target_problems(**flags: str) -> list[str]:
    """Unknown LoRA target names in comma-separated flags (flag name -> value)."""
    from seal_jax.lora import ALL_TARGETS
    out = []
    for name, value in flags.items():
        names = split_names(value)
        bad = [t for t in names if t not in ALL_TARGETS]
        if bad or not names:
            out.append(f"{flag_name(name)}: unknown LoRA target(s) {bad or '[]'}; choose from {','.join(ALL_TARGETS)}")
    return out


def load_model(cfg: ModelFlags, remat: bool = False):
    """(model, tokenizer) of the model flags: the checkpoint, or the preset at random init (seeded); a tokenizer with
    more ids than the model has rows stops the run."""
    import seal_jax
    from seal_jax.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_dir(cfg.tokenizer or cfg.model)
    if cfg.model:
        model = seal_jax.load_pretrained(cfg.model, dtype=cfg.dtype, allow_nonfinite=cfg.allow_nonfinite_weights)
    else:
        model = seal_jax.init_model(seal_jax.get_preset(cfg.preset), seed=cfg.seed, dtype=cfg.dtype)
    if remat:
        model = seal_jax.Model(model.config.replace(remat=True), model.params)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"error: tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{model.config.vocab_size}")
    return model, tokenizer


def parse_with_preset(ap: argparse.ArgumentParser, argv, preset_flag: str, presets: dict[str, dict],
                      parsers: Sequence[argparse.ArgumentParser] = ()) -> argparse.Namespace:
    """Parse; when ``--<preset_flag> NAME`` names a preset, its values become the defaults (of `parsers`, or of `ap`)
    and argv is parsed again, so a flag given explicitly still wins."""
    args = ap.parse_args(argv)
    values = presets.get(getattr(args, preset_flag, None) or "", {})
    if values:
        for p in parsers or [ap]:
            own = {a.dest for a in p._actions}
            p.set_defaults(**{k: v for k, v in values.items() if k in own})
        args = ap.parse_args(argv)
    return args


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and a flag's default after its help (when it has a value to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, [], "", argparse.SUPPRESS) \
                and not action.required and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parse_config(prog: str, description: str, argv, configs, check, presets: dict[str, dict] | None = None,
                 preset_flag: str = "fidelity"):
    """The config a command line asks for. `configs`: one config class, or {subcommand: config class} (the class's
    docstring after its first ": " is the subcommand's help). Presets: ``--<preset_flag> NAME`` makes presets[NAME]
    the defaults (explicit flags still win). `check(config)` lists problems; the first stops the command with one line
    (`seal_jax.runs.ArgumentParser`: ``error: PROG: ... (see --help)``, status 2)."""
    from seal_jax.runs import ArgumentParser
    ap = ArgumentParser(prog=f"python -m {prog}", description=description, formatter_class=HelpFormatter)
    if isinstance(configs, dict):
        sub = ap.add_subparsers(dest="command", required=True)
        for name, cls in configs.items():
            add_flags(sub.add_parser(name, help=(cls.__doc__ or name).split(": ", 1)[-1],
                                     formatter_class=HelpFormatter), cls)
        args = parse_with_preset(ap, argv, preset_flag, presets or {}, list(sub.choices.values()))
        cfg = build(configs[args.command], args)
    else:
        add_flags(ap, configs)
        cfg = build(configs, parse_with_preset(ap, argv, preset_flag, presets or {}))
    bad = check(cfg)
    if bad:
        ap.error(bad[0])
    return cfg
