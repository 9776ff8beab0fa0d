"""seal_jax.seal: selection rules on fixed inputs, and a toy third SEAL domain (not knowledge, not ARC) defined in a
few lines and run for a ReST-EM round through the public library on the embedded demo model and world."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest

from seal_jax import seal
from seal_jax.seal import Outcome, SelectRule, SelfEdit, select


def _o(item, sample, reward, baseline=0.0, failed=False):
    return Outcome(SelfEdit(item, sample, (1,), f"edit {item}/{sample}"), reward, baseline, failed,
                   "unusable" if failed else None)


def test_best_of_k_ties_go_to_the_earliest_sample_and_failures_are_never_kept():
    outs = [_o(0, 1, 0.5, 0.2), _o(0, 0, 0.5, 0.2), _o(0, 2, 0.1, 0.2),  # a tie at 0.5: sample 0 (given out of order)
            _o(1, 0, 0.0, 0.4, failed=True), _o(1, 1, 0.3, 0.4),  # best is not above the baseline
            _o(2, 0, 0.0, failed=True)]  # nothing usable
    sel = select(outs, SelectRule("best"))
    assert [(o.edit.item, o.edit.sample) for o in sel.kept] == [(0, 0), (1, 1)]
    assert [r["chosen"] for r in sel.per_item] == [[0], [1], []]
    assert [r["tie"] for r in sel.per_item] == [True, False, False]
    assert [r["improved"] for r in sel.per_item] == [True, False, False]
    assert sel.per_item[0]["rewards"] == [0.5, 0.5, 0.1]  # in sample order
    strict = select(outs, SelectRule("best", require_improvement=True))
    assert [(o.edit.item, o.edit.sample) for o in strict.kept] == [(0, 0)]


def test_keep_all_with_improvement_is_arc_behaviour_cloning():
    outs = [_o(0, 0, 1.0), _o(0, 1, 0.0), _o(0, 2, 1.0), _o(1, 0, 0.0, failed=True), _o(1, 1, 1.0)]
    solved = select(outs, SelectRule("all", require_improvement=True))  # reward 1 = solved, baseline 0
    assert [(o.edit.item, o.edit.sample) for o in solved.kept] == [(0, 0), (0, 2), (1, 1)]
    every = select(outs, SelectRule("all"))  # every usable one (the failed reply is never cloned)
    assert [(o.edit.item, o.edit.sample) for o in every.kept] == [(0, 0), (0, 1), (0, 2), (1, 1)]
    with pytest.raises(ValueError):
        SelectRule("some")


class _FakeEngine:
    """Hands the jobs back as `Finished` records in a fixed finishing order (no training)."""

    def __init__(self, order):
        self.order = order

    def run(self, jobs):
        from seal_jax.engine import Finished
        for i in self.order:
            yield Finished(i, jobs[i], None, 1, 1, [0.5], [], 3)


def test_evaluate_rewards_groups_as_soon_as_they_are_complete():
    from seal_jax.engine import Job
    jobs = [Job([], None, key=(task, c)) for task, c in [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1)]]
    calls = []

    def reward(batch):
        calls.append([[f.index for f in g] for g in batch])
        return [g[0].job.key[0] for g in batch]

    # grouped by task: a task is rewarded once all its jobs are trained, in finishing order
    out = list(seal.evaluate(_FakeEngine([0, 2, 3, 1, 4]), jobs, reward, group=lambda j: j.key[0]))
    assert out == [["b"], ["a"], ["c"]] and calls == [[[2]], [[0, 1]], [[3, 4]]]
    # each job alone, batched until two are waiting; the rest at the end of the stream
    calls.clear()
    out = list(seal.evaluate(_FakeEngine([4, 3, 2, 1, 0]), jobs, reward, ready=lambda b: len(b) >= 2))
    assert calls == [[[4], [3]], [[2], [1]], [[0]]] and out == [["c", "c"], ["b", "a"], ["a"]]


def test_derive_seed_is_stable():
    assert seal.derive_seed(0, "self-edit", 1, 2) == seal.derive_seed(0, "self-edit", 1, 2)
    assert seal.derive_seed(0, "self-edit", 1, 2) != seal.derive_seed(0, "self-edit", 2, 1)
    assert 0 <= seal.derive_seed(7, "x") < 2 ** 31


# ------------------------------------------------------------------------------------ a toy third domain

@dataclasses.dataclass
class RestateTask:
    """Toy domain: the self-edit should restate the passage; the reward is the fraction of the passage's distinct
    words it contains (no test-time training: any reward a task computes plugs in the same way)."""

    tokenizer: object
    passages: list

    def self_edit_prompts(self):
        return [self.tokenizer.encode(f"{p.title}\n{p.context}\n\nImplications:\n") for p in self.passages]

    def evaluate(self, policy, edits, seed):
        words = lambda t: set(re.findall(r"[a-z]+", t.lower()))  # noqa: E731
        out = []
        for e in edits:
            if not e.text:
                out.append(Outcome(e, 0.0, failed=True, reason="empty self-edit"))
                continue
            want = words(self.passages[e.item].context)
            out.append(Outcome(e, len(words(e.text) & want) / len(want)))
        return out


def test_a_toy_task_runs_a_rest_em_round_through_the_library_and_is_deterministic(demo_policy):
    from seal_jax.lora import LoraConfig
    from seal_jax.sft import SFTConfig
    model, tok, passages = demo_policy
    task = RestateTask(tok, passages)
    cfg = seal.RoundConfig(k=2, sampling=seal.Sampling(temperature=1.0, top_p=1.0, max_new_tokens=24,
                                                       stop_token_ids=(tok.eos_token_id,)),
                           rule=SelectRule("best"),
                           sft=SFTConfig(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), learning_rate=1e-3,
                                         epochs=1, batch_size=2))
    new, result = seal.rest_em_round(model, task, cfg, seed=3)
    assert len(result.edits) == 4 and {(e.item, e.sample) for e in result.edits} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(0.0 <= o.reward <= 1.0 for o in result.outcomes)
    assert len(result.selection.kept) == 2 and len(result.sft_losses) == 1  # best of 2 per passage, one SFT step
    for r in result.selection.per_item:  # the kept one is the best (earliest on a tie)
        assert r["chosen"] == [int(np.argmax(r["rewards"]))]
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.params, model.params)
    assert any(jax.tree.leaves(changed))  # the M-step moved the policy
    again, result2 = seal.rest_em_round(model, task, cfg, seed=3)
    assert result2.edits == result.edits and result2.outcomes == result.outcomes
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), new.params, again.params)
    assert all(jax.tree.leaves(same))  # bit-identical given the seed
    other, _ = seal.rest_em_round(model, task, cfg, seed=4)  # the seed drives the samples and the M-step
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), new.params, other.params)
    assert not all(jax.tree.leaves(same))
