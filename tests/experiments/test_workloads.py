"""experiments/workloads.py's accounting on a hand-made workload whose token slots are worked out by hand."""

import seal_jax
from experiments import workloads as wl
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig


def _workload(slots: int = 2) -> wl.Workload:
    """A: two 7-token examples x 1 epoch; B: one 8-token example x 3 epochs; C: one 5-token example (batch 1)."""
    ex = lambda n: il.Example(tuple(range(3, 3 + n)))  # noqa: E731
    jobs = [wl.WJob([ex(7), ex(7)], il.TrainSpec(epochs=1, seed=0), 0, "a"),
            wl.WJob([ex(8)], il.TrainSpec(epochs=3, seed=1), 1, "b"),
            wl.WJob([ex(5)], il.TrainSpec(epochs=1, seed=2), 2, "c")]
    return wl.Workload("hand-made", jobs, LoraConfig(rank=2, alpha=4.0, targets=("q", "v")), "all", 64, 0, 512,
                       adapters_per_batch=2, slots=slots, tokens_per_step=16, rows={"a": 1, "b": 1, "c": 1},
                       answer=None)


def test_counts_worked_out_by_hand():
    w = _workload()
    assert w.real_tokens == 2 * 7 + 3 * 8 + 5  # 43
    # padded, K = 2: [A, B] -> 2 adapters x 3 steps (B's) x 1 row x 16 (the length bucket) = 96;
    #                [C, empty] -> 2 x 1 x 1 x 16 = 32
    assert wl.count_padded(w) == {"token_slots": 128, "real_tokens": 43}
    # ragged: rows of 16 tokens, one row per step (16 tokens per step), 2 slots, 8 steps per call.
    # call 1 (A, B resident): A7+B8, A7+B8, B8 -> 3 steps; call 2 (C admitted): C5 -> 1 step. 4 x 16 = 64.
    model = seal_jax.init_model(seal_jax.get_preset("tiny-qwen2"), seed=0)
    got = wl.count_ragged(w, model)
    assert (got["token_slots"], got["real_tokens"], got["global_steps"], got["calls"]) == (64, 43, 4, 2)
