"""The SEAL algorithm as pure pieces over data: sample self-edits, reward them, select, fine-tune the policy on them.

    edits    = sample_self_edits(policy, task.self_edit_prompts(), k, sampling, seed)   # E-step, part 1
    outcomes = task.evaluate(policy, edits, seed)                                       # E-step, part 2: rewards
             # (both domains' task.evaluate stream their adapters through `evaluate(engine, jobs, reward)`)
    chosen   = select(outcomes, rule)                                                    # best-of-k / keep-all
    policy'  = m_step(policy, [task.training_pair(o) for o in chosen.kept], eos, sft)  # M-step: LoRA SFT, merged
    rest_em_round(policy, task, RoundConfig(...), seed) -> (policy', RoundResult)        # the four, composed

A *task* (`Task`) is what a domain brings: the self-edit prompt of each of its inputs, the reward of a self-edit
(usually: turn it into training data, fine-tune an adapter on it with `seal_jax.engine`, quiz the adapted model; a
self-edit that cannot be used is an `Outcome` with ``failed=True``, reward 0 and a reason) and, optionally, the
supervised target a kept self-edit is cloned as. Knowledge incorporation (`seal_jax.knowledge`) and few-shot ARC
(`seal_jax.arc`) are two such domains; `tests/test_seal_loop.py` defines a third in a few lines.

State is data: the policy is a `seal_jax.Model` (params pytree), results are frozen dataclasses, randomness comes
from integer seeds (`derive_seed`), so `rest_em_round` is deterministic given its seed. Run directories, resume and
events are the experiment drivers' business (`seal_jax/knowledge/experiment.py`, `seal_jax/arc/experiment.py`),
not this module's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Protocol, Sequence, TypeVar

if TYPE_CHECKING:
    from seal_jax.engine import Engine, Finished, Job
    from seal_jax.models.model import Model

R = TypeVar("R")

__all__ = ["Outcome", "RoundConfig", "RoundResult", "Sampling", "Selection", "SelectRule", "SelfEdit", "Task",
           "TrainingPair", "derive_seed", "evaluate", "m_step", "rest_em_round", "sample_self_edits", "select",
           "training_pair"]


def derive_seed(base: int, *parts: Any) -> int:
    """A 31-bit seed for one named piece of work (e.g. ``derive_seed(seed, "self-edit", item, sample)``): a hash of
    the parts, so it does not depend on which other work shares a batch or on the order work is done in."""
    h = hashlib.sha256(":".join(map(str, (base,) + parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class SelfEdit:
    """One sampled self-edit: sample ``sample`` for input ``item``, the prompt it continued and the reply."""

    item: int
    sample: int
    prompt: tuple[int, ...]  # token ids of the self-edit prompt
    text: str  # the policy's reply, decoded (special tokens dropped) and stripped


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A self-edit's reward. ``baseline`` is the input's reward without the self-edit (what "improved" compares to);
    a self-edit that could not be used is ``failed`` with reward 0 and its ``reason``. ``target`` is the text the
    M-step clones when kept (default: the reply itself)."""

    edit: SelfEdit
    reward: float
    baseline: float = 0.0
    failed: bool = False
    reason: str | None = None
    target: str | None = None

    @property
    def improved(self) -> bool:
        return not self.failed and self.reward > self.baseline


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How self-edits are sampled (the knowledge defaults: the original's T 1.0, top-p 0.95)."""

    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 8192
    stop_token_ids: tuple[int, ...] = ()
    max_rows: int = 64  # samples per generate call (each has its own seed, so batching cannot change a sample)


@dataclasses.dataclass(frozen=True)
class SelectRule:
    """Which rewarded self-edits the M-step learns from.

    keep="best": one per input, the highest reward, ties to the earliest sample (the original's stable sort; the
    knowledge ReST-EM rule). keep="all": every one (ARC behaviour cloning, with require_improvement: the solved ones).
    require_improvement: only rewards above the input's baseline. Failed self-edits are never kept."""

    keep: str = "best"
    require_improvement: bool = False

    def __post_init__(self):
        if self.keep not in ("best", "all"):
            raise ValueError(f"SelectRule.keep must be 'best' or 'all', got {self.keep!r}")


@dataclasses.dataclass(frozen=True)
class Selection:
    """`select`'s answer: the kept outcomes (input order, then sample order) and, per input, what was chosen."""

    kept: tuple[Outcome, ...]
    per_item: tuple[dict, ...]  # {"item", "rewards", "chosen" (sample indices), "tie", "baseline", "improved"}


def select(outcomes: Sequence[Outcome], rule: SelectRule = SelectRule()) -> Selection:
    """Group the outcomes by input and keep what `rule` says (see `SelectRule`)."""
    by_item: dict[int, list[Outcome]] = {}
    for o in outcomes:
        by_item.setdefault(o.edit.item, []).append(o)
    kept, records = [], []
    for item in sorted(by_item):
        group = sorted(by_item[item], key=lambda o: o.edit.sample)
        usable = [o for o in group if not o.failed]
        rewards = [o.reward for o in group]
        if rule.keep == "best":
            best = max(usable, key=lambda o: o.reward, default=None)  # max keeps the first of equal rewards
            candidates = [] if best is None else [best]
        else:
            candidates = usable
        chosen = [o for o in candidates if o.improved or not rule.require_improvement]
        top = max((o.reward for o in usable), default=None)
        records.append({"item": item, "rewards": rewards, "chosen": [o.edit.sample for o in chosen],
                        "best": None if rule.keep != "best" or not candidates else candidates[0].edit.sample,
                        "tie": top is not None and sum(o.reward == top for o in usable) > 1,
                        "baseline": group[0].baseline, "improved": any(o.improved for o in candidates)})
        kept += chosen
    return Selection(tuple(kept), tuple(records))


@dataclasses.dataclass(frozen=True)
class TrainingPair:
    """One M-step row: the self-edit prompt's ids and the target's ids (no bos; the eos is added by the SFT)."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]


def m_step(policy: Model, pairs: Sequence[TrainingPair], eos_id: int | None, cfg, checkpoint_dir: str | None = None
           ) -> tuple[Model, list[float]]:
    """ReST-EM's M-step: LoRA SFT of the policy on the kept (prompt, target) pairs (`seal_jax.sft`, completion-only
    loss by default), merged into the weights. Returns (the next policy, the SFT losses); a diverging SFT raises
    FloatingPointError. Resumable through ``checkpoint_dir``."""
    from seal_jax import sft
    from seal_jax.lora import merge
    if not pairs:
        raise ValueError("m_step: no training pairs (select kept nothing)")
    lora, losses = sft.train_sft(policy, [p.prompt for p in pairs], [p.completion for p in pairs], eos_id, cfg,
                                 checkpoint_dir=checkpoint_dir)
    return merge(policy, lora), losses


def sample_self_edits(policy: Model, tokenizer, prompts: Sequence[Sequence[int]], slots: Sequence[tuple[int, int]],
                      sampling: Sampling, seed: int, lora=None, mesh=None) -> list[SelfEdit]:
    """Sample one reply per (item, sample) slot from the policy, continuing ``prompts[item]``; the slot's own seed
    (``derive_seed(seed, "self-edit", item, sample)``) makes each sample independent of how slots are batched."""
    from seal_jax import generation
    out: list[SelfEdit] = []
    slots = list(slots)
    for s in range(0, len(slots), sampling.max_rows):
        part = slots[s:s + sampling.max_rows]
        new = generation.generate(policy, [list(prompts[i]) for i, _ in part], max_new_tokens=sampling.max_new_tokens,
                                  temperature=sampling.temperature, top_p=sampling.top_p,
                                  seed=[derive_seed(seed, "self-edit", i, j) for i, j in part],
                                  stop_token_ids=list(sampling.stop_token_ids) or None, lora=lora, mesh=mesh)
        out += [SelfEdit(i, j, tuple(prompts[i]), tokenizer.decode(o).strip()) for (i, j), o in zip(part, new)]
    return out


def evaluate(engine: Engine, jobs: Sequence[Job], reward: Callable[[list[list[Finished]]], Sequence[R]], *,
             group: Callable[[Job], Hashable] | None = None,
             ready: Callable[[list[list[Finished]]], bool] | None = None) -> Iterator[list[R]]:
    """The E-step's reward core both domains share: train every job's adapter in ONE engine stream
    (`seal_jax.engine.Engine.run`: adapters resident in slots, packed token streams, slots refilled as jobs finish)
    and reward the adapters as soon as they are trained (between the stream's compiled calls: the stream waits while
    `reward` runs), so results are out, and resumable, before the rest of the stream has trained.

    Jobs are grouped by ``group(job)`` (default: each job alone); a group is complete when all its jobs are trained
    (ARC: a task's configurations, whose inference votes over them together). Complete groups wait in a batch until
    ``ready(batch)`` (default: at once) says the batch is worth one reward call (knowledge: enough questions for one
    multi-adapter generation call); ``reward(batch)`` turns the batch's trained adapters (`seal_jax.engine.Finished`:
    the LoRA, losses, steps, failure) into results, yielded as one list per call, in finishing order; whatever waits
    at the end of the stream is rewarded last."""
    key = (lambda i, job: i) if group is None else (lambda i, job: group(job))
    need: dict[Hashable, int] = {}
    for i, j in enumerate(jobs):
        need[key(i, j)] = need.get(key(i, j), 0) + 1
    trained: dict[Hashable, list] = {}
    batch: list[list] = []
    for done in engine.run(jobs):
        g = key(done.index, done.job)
        trained.setdefault(g, []).append(done)
        if len(trained[g]) == need[g]:
            batch.append(trained.pop(g))
            if ready is None or ready(batch):
                yield list(reward(batch))
                batch = []
    if batch:
        yield list(reward(batch))


class Task(Protocol):
    """What a SEAL domain brings (knowledge incorporation, ARC, or a new one)."""

    tokenizer: Any

    def self_edit_prompts(self) -> Sequence[Sequence[int]]:
        """Token ids of the self-edit prompt of each input."""

    def evaluate(self, policy: Model, edits: Sequence[SelfEdit], seed: int) -> Sequence[Outcome]:
        """The reward of each self-edit (failed ones with reward 0 and a reason)."""


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """One ReST-EM round: k self-edits per input, how they are sampled and selected, and the M-step's SFT."""

    k: int
    sampling: Sampling
    rule: SelectRule
    sft: Any  # seal_jax.sft.SFTConfig


@dataclasses.dataclass(frozen=True)
class RoundResult:
    edits: tuple[SelfEdit, ...]
    outcomes: tuple[Outcome, ...]
    selection: Selection
    sft_losses: tuple[float, ...]


def training_pair(tokenizer, outcome: Outcome) -> TrainingPair:
    """The M-step row of a kept outcome: its prompt and its target (the reply unless the task set one)."""
    text = outcome.edit.text if outcome.target is None else outcome.target
    return TrainingPair(outcome.edit.prompt, tuple(tokenizer.encode(text, add_bos=False)))


def rest_em_round(policy: Model, task: Task, cfg: RoundConfig, seed: int,
                  on_outcomes: Callable[[Sequence[Outcome]], None] | None = None) -> tuple[Model, RoundResult]:
    """One ReST-EM round: sample ``cfg.k`` self-edits per input, reward them with the task, select, and fine-tune
    the policy on the kept ones. A round that keeps nothing returns the policy unchanged (and no losses)."""
    prompts = task.self_edit_prompts()
    slots = [(i, j) for i in range(len(prompts)) for j in range(cfg.k)]
    edits = sample_self_edits(policy, task.tokenizer, prompts, slots, cfg.sampling, derive_seed(seed, "sample"))
    outcomes = list(task.evaluate(policy, edits, derive_seed(seed, "evaluate")))
    if on_outcomes is not None:
        on_outcomes(outcomes)
    chosen = select(outcomes, cfg.rule)
    if not chosen.kept:
        return policy, RoundResult(tuple(edits), tuple(outcomes), chosen, ())
    sft_cfg = dataclasses.replace(cfg.sft, seed=derive_seed(seed, "m-step"))
    nxt, losses = m_step(policy, [training_pair(task.tokenizer, o) for o in chosen.kept],
                         task.tokenizer.eos_token_id, sft_cfg)
    return nxt, RoundResult(tuple(edits), tuple(outcomes), chosen, tuple(losses))
