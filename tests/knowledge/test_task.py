"""seal_jax.knowledge.task: knowledge incorporation implements the SEAL task protocol, so a ReST-EM round runs on it
through `seal.rest_em_round` (the embedded demo model and world: the policy writes implications, each is
test-time trained and quizzed, the best per passage is cloned)."""

from __future__ import annotations

from seal_jax import seal
from seal_jax.knowledge.grader import make_grader
from seal_jax.knowledge.task import KnowledgeTask
from seal_jax.knowledge.ttt import TTTConfig
from seal_jax.lora import LoraConfig


def test_a_rest_em_round_on_knowledge_incorporation(demo_policy):
    from seal_jax.sft import SFTConfig
    model, tok, passages = demo_policy
    cfg = TTTConfig(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), learning_rate=3e-3, epochs=1,
                    loss_mode="all", answer_max_tokens=12, slots=4)
    task = KnowledgeTask(tok, passages, cfg, make_grader("offline").grade)
    prompts = task.self_edit_prompts()
    assert tok.decode(prompts[0]).startswith("Read the passage below")
    # a hand-written empty self-edit is a failed sample with its reason, never kept
    empty = seal.SelfEdit(0, 9, tuple(prompts[0]), "")
    assert task.evaluate(model, [empty], seed=0)[0].reason == "the self-edit is empty"
    rc = seal.RoundConfig(k=2, sampling=seal.Sampling(max_new_tokens=24, stop_token_ids=(tok.eos_token_id,)),
                          rule=seal.SelectRule("best"),
                          sft=SFTConfig(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v")), epochs=1,
                                        batch_size=2, learning_rate=1e-3))
    new, result = seal.rest_em_round(model, task, rc, seed=0)
    assert len(result.outcomes) == 4 and all(0.0 <= o.reward <= 1.0 for o in result.outcomes)
    base = {o.edit.item: o.baseline for o in result.outcomes}
    assert len(base) == 2  # one baseline per passage, shared by its self-edits
    kept = result.selection.kept
    assert len(kept) == sum(any(not o.failed for o in result.outcomes if o.edit.item == i) for i in range(2))
    assert (new is model) == (not kept)
    assert all(o.target is None for o in kept)  # the reply itself is cloned
