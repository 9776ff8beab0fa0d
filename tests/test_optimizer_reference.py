"""One LoRA adapter trained by seal_jax's inner loop == the same training done with PEFT + torch + transformers.

The reference is written from the outside libraries only: a tiny random transformers model, a PEFT LoRA over it with
the same initial A/B (passed through seal_jax's PEFT writer), `torch.optim.AdamW`, `clip_grad_norm_` and the HF
schedules. Both sides see exactly the same batches in the same order (read from the seal_jax plan) and the loss is
transformers' causal-LM loss (labels=-100 on padding), so per-step losses, pre-clip gradient norms and final LoRA
weights must agree to float32 round-off. Clipping is active on most steps (max_norm below the measured norms).
Measured: losses within 2.3e-7 relative, pre-clip norms within 5.4e-7, final weights within 3.5e-6 (they move by
3.6e-3 to 1.2e-2). Deliberate mistakes in the reference (no clipping, max_norm x1.1, the schedule one step early,
no warm-up, L2 Adam instead of AdamW, eps 1e-6, beta2 0.99, two batches swapped) each break the loss comparison.
"""

import copy

import jax
import numpy as np
import pytest
import torch
import transformers

import seal_jax
from seal_jax import inner_loop as il
from seal_jax.lora import LoraConfig, init_lora
from seal_jax.models.schema import peft_modules
from tests.conftest import build_hf_model

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # every projection: checks the PEFT mapping of each
LORA = LoraConfig(rank=4, alpha=8.0, targets=TARGETS)
LR = 2e-3
MAX_NORM = 1.0  # measured pre-clip norms 0.89-1.68: 4 of the 6 steps are clipped, 2 are not
N_EXAMPLES, BATCH, EPOCHS = 5, 2, 2  # 3 batches an epoch (the last holds 1 example), 6 steps

HF_SCHEDULES = {
    "linear": lambda opt, warm, total: transformers.get_linear_schedule_with_warmup(opt, warm, total),
    "cosine": lambda opt, warm, total: transformers.get_cosine_schedule_with_warmup(opt, warm, total),
    "constant": lambda opt, warm, total: transformers.get_constant_schedule(opt),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("optref_base"))
    hf_model = build_hf_model("qwen2", path, seed=3)
    return hf_model, seal_jax.load_pretrained(path)


def _examples():
    rng = np.random.default_rng(11)
    return [il.Example(tuple(rng.integers(3, 512, rng.integers(6, 20)).tolist())) for _ in range(N_EXAMPLES)]


def _torch_reference(hf_model, adapter_dir, plan, schedule, warmup, weight_decay, max_norm=MAX_NORM):
    """Train the PEFT adapter in `adapter_dir` on the plan's batches.

    Returns (peft model, its initial layer-1 down_proj lora_A.weight, losses, pre-clip norms)."""
    from peft import PeftModel
    torch.manual_seed(0)
    pm = PeftModel.from_pretrained(copy.deepcopy(hf_model), adapter_dir, is_trainable=True)
    init_a = pm.base_model.model.model.layers[1].mlp.down_proj.lora_A["default"].weight.detach().numpy().copy()
    pm.train()  # lora_dropout is 0, and the tiny models have no dropout: train mode changes nothing else
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    total = int(plan.total_steps[0])
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    sched = HF_SCHEDULES[schedule](opt, warmup, total)
    losses, norms = [], []
    for s in range(total):
        rows = [int(i) for i in plan.batch_index[0, s] if i >= 0]
        seg = torch.tensor(plan.segment_ids[0, rows] > 0)
        ids = torch.tensor(plan.tokens[0, rows], dtype=torch.long)  # right-padded rows, as seal_jax trains them
        labels = torch.where(seg, ids, torch.tensor(-100))
        opt.zero_grad()
        loss = pm(input_ids=ids, attention_mask=seg.long(), labels=labels).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        opt.step()
        sched.step()
        losses.append(loss.item())
    return pm, init_a, np.asarray(losses), np.asarray(norms)


@pytest.mark.parametrize("schedule, warmup, weight_decay", [
    ("linear", 2, 0.0),
    ("cosine", 2, 0.1),
    ("constant", 0, 0.05),
])
def test_inner_loop_matches_torch_adamw_peft(base, tmp_path, schedule, warmup, weight_decay):
    hf_model, model = base
    spec = il.TrainSpec(learning_rate=LR, schedule=schedule, warmup_steps=warmup, epochs=EPOCHS, batch_size=BATCH,
                        max_grad_norm=MAX_NORM, weight_decay=weight_decay, seed=5)
    plan = il.build_plan([_examples()], spec)  # loss_mode "all": every real token is a target, padding masked
    total = int(plan.total_steps[0])
    assert total == 6 and [int((plan.batch_index[0, s] >= 0).sum()) for s in range(total)] == [2, 2, 1, 2, 2, 1]

    lora = init_lora(model.config, LORA, jax.random.PRNGKey(7), num_adapters=1)
    init_dir = str(tmp_path / "init")
    seal_jax.save_adapter(lora.adapter(0), init_dir, model)  # the same initial A (B = 0) for PEFT
    state = il.train_adapters(model, lora, plan)
    assert int(state.step[0]) == total and not bool(state.failed[0])

    pm, peft_a0, ref_losses, ref_norms = _torch_reference(hf_model, init_dir, plan, schedule, warmup, weight_decay)
    # the reference really starts from seal_jax's A: PEFT's lora_A.weight is A transposed
    np.testing.assert_array_equal(peft_a0, np.asarray(lora.weights["down"]["a"][0, 1]).T)

    # clipping is active: the pre-clip norm exceeds max_norm on most steps (and not on all, so both branches count)
    assert (ref_norms > MAX_NORM).sum() >= 4 and (ref_norms < MAX_NORM).any(), ref_norms
    np.testing.assert_allclose(np.asarray(state.grad_norms[0, :total]), ref_norms, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(state.losses[0, :total]), ref_losses, rtol=1e-5)

    # final weights, read straight from the torch parameters: seal_jax a[i] = lora_A.weight.T, b[i] = lora_B.weight.T
    trained = {n: p.detach().numpy() for n, p in pm.named_parameters() if p.requires_grad}
    for t in TARGETS:
        for ab in ("a", "b"):
            for i in range(model.config.num_layers):
                key = f"base_model.model.model.layers.{i}.{peft_modules()[t]}.lora_{ab.upper()}.default.weight"
                theirs = trained.pop(key).T
                ours, init = np.asarray(state.lora.weights[t][ab][0, i]), np.asarray(lora.weights[t][ab][0, i])
                assert np.abs(theirs - init).max() > 100 * 1e-5, (t, ab, i, "the weights hardly moved")
                np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=f"layer {i} {t}.{ab}")
    assert not trained, sorted(trained)  # every trained torch tensor was compared
