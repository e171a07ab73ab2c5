"""The fused tau-scaled loss against the plain reference computation, and the traps around it."""
import pytest
import torch
import torch.nn.functional as F

import sept_mini as sm
from conftest import tiny_qwen


def reference_nll_sum(hidden, weight, bias, targets, tau):
    logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())  # (N, V)
    return -F.log_softmax(logits / tau, dim=-1).gather(1, targets[:, None]).sum()


def grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("chunk", [4, 7, 1000])  # divides 28, does not, and larger than N
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_matches_reference_loss_and_grads_fp32(tau, chunk, with_bias):
    torch.manual_seed(0)
    N, H, V = 28, 16, 50
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    targets = torch.randint(0, V, (N,))
    params = [hidden, weight] + ([bias] if with_bias else [])
    fused = sm.fused_nll_sum(hidden, weight, bias, targets, tau, chunk_size=chunk)
    ref = reference_nll_sum(hidden, weight, bias, targets, tau)
    assert torch.allclose(fused, ref, atol=1e-5, rtol=1e-6)
    g_fused = grads(lambda: 3.0 * sm.fused_nll_sum(hidden, weight, bias, targets, tau, chunk_size=chunk), *params)
    g_ref = grads(lambda: 3.0 * reference_nll_sum(hidden, weight, bias, targets, tau), *params)
    for a, b in zip(g_fused, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softmax_kernels", [True, False])  # a CPU's route (vendor-independent bits), a GPU's
def test_both_routes_of_the_chunk_kernel_match_the_reference(softmax_kernels):
    from plumbing.fused import nll_and_softmax_
    torch.manual_seed(0)
    logits, targets = 4 * torch.randn(30, 70), torch.randint(0, 70, (30,))
    reference_nll = -F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    reference_probs = F.softmax(logits, dim=1)
    buffer = logits.clone()
    nll, probs = nll_and_softmax_(buffer, targets, softmax_kernels)
    assert probs.data_ptr() == buffer.data_ptr()  # in place: one (C, V) buffer, whichever route
    assert torch.allclose(nll, reference_nll, atol=1e-5) and torch.allclose(probs, reference_probs, atol=1e-6)


def test_fused_bf16_close_to_fp32_reference():
    torch.manual_seed(0)
    hidden = torch.randn(40, 32).bfloat16().requires_grad_()
    weight = (0.2 * torch.randn(300, 32)).bfloat16().requires_grad_()
    targets = torch.randint(0, 300, (40,))
    fused = sm.fused_nll_sum(hidden, weight, None, targets, 0.7, chunk_size=16)
    ref = reference_nll_sum(hidden, weight, None, targets, 0.7)
    assert fused.dtype == torch.float32  # logsumexp is accumulated in fp32
    assert abs(fused.item() - ref.item()) / ref.item() < 1e-2  # bf16 logits: ~3 significant digits
    fused.backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    reference_nll_sum(h32, w32, None, targets, 0.7).backward()
    assert torch.allclose(hidden.grad.float(), h32.grad, atol=2e-2, rtol=2e-2)
    assert torch.allclose(weight.grad.float(), w32.grad, atol=2e-2, rtol=2e-2)


def test_fused_frozen_weight_gets_no_grad_and_needs_no_grad_buffer():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8)  # frozen, as the output layer under LoRA/QLoRA
    targets = torch.randint(0, 20, (10,))
    sm.fused_nll_sum(hidden, weight, None, targets, 1.0).backward()
    assert weight.grad is None
    ref_h = hidden.detach().clone().requires_grad_()
    reference_nll_sum(ref_h, weight, None, targets, 1.0).backward()
    assert torch.allclose(hidden.grad, ref_h.grad, atol=1e-6)


def batch_with_padding_and_empty_row(vocab):
    """Three right-padded rows; the last one's answer is fully masked."""
    torch.manual_seed(1)
    rollouts = [{"prompt_ids": [1, 2, 3], "answer_ids": [4, 5, 0]},
                {"prompt_ids": [6, 7], "answer_ids": [8, 9, 10, 11, 0]},
                {"prompt_ids": [3, 4, 5, 6], "answer_ids": [7]}]
    input_ids, mask, labels = sm.training_batch(rollouts, pad_id=0)
    labels[2] = -100
    return input_ids, mask, labels


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_answer_nll_fused_equals_naive_through_a_model(tie, tau):
    model = tiny_qwen(30, tie=tie)
    batch = batch_with_padding_and_empty_row(30)
    out = {}
    for impl in ("fused", "naive"):
        model.zero_grad()
        nll, n = sm.answer_nll(model, *batch, tau, impl)
        (nll / n).backward()
        out[impl] = (nll.item(), n, {k: p.grad.clone() for k, p in model.named_parameters()})
    assert out["fused"][1] == out["naive"][1] == 3 + 5  # answer tokens of rows 1 and 2 only
    assert abs(out["fused"][0] - out["naive"][0]) < 1e-4
    for k, g in out["naive"][2].items():
        assert torch.allclose(out["fused"][2][k], g, atol=1e-5), k


def test_loss_at_tau_one_equals_plain_cross_entropy():
    model = tiny_qwen(30)
    input_ids, mask, labels = batch_with_padding_and_empty_row(30)
    nll, n = sm.answer_nll(model, input_ids, mask, labels, 1.0, "fused")
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 30), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(nll / n, ce, atol=1e-5)


def test_loss_uses_training_temperature():
    model = tiny_qwen(30)
    batch = batch_with_padding_and_empty_row(30)
    losses = {tau: sm.answer_nll(model, *batch, tau, "fused")[0].item() for tau in (0.5, 1.0, 2.0)}
    assert len({round(v, 4) for v in losses.values()}) == 3
    # and it is exactly log_softmax(logits / tau): check one tau against the model's own logits
    input_ids, mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1] / 2.0
    m = labels[:, 1:] != -100
    ref = -F.log_softmax(logits, -1)[m].gather(1, labels[:, 1:][m][:, None]).sum()
    assert abs(losses[2.0] - ref.item()) < 1e-4


def test_prompt_and_padding_positions_are_masked_and_eos_is_kept():
    eos = 0  # pad == eos, as in Qwen base models and the toy tokenizer
    input_ids, mask, labels = sm.training_batch([{"prompt_ids": [5, 6, 7], "answer_ids": [8, 9, eos]},
                                                 {"prompt_ids": [5], "answer_ids": [eos]}], pad_id=eos)
    assert labels[0].tolist() == [-100, -100, -100, 8, 9, eos]
    assert labels[1].tolist() == [-100, eos, -100, -100, -100, -100]
    assert mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert input_ids[1].tolist() == [5, eos, eos, eos, eos, eos]  # right padding: positions start at 0


def test_lora_gradients_equal_naive_loss_gradients():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny_qwen(30, tie=False), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                target_modules="all-linear", init_lora_weights=False))
    model.train()
    batch = batch_with_padding_and_empty_row(30)
    out = {}
    for impl in ("fused", "naive"):
        model.zero_grad()
        nll, n = sm.answer_nll(model, *batch, 0.7, impl)
        (nll / n).backward()
        out[impl] = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    assert out["fused"] and all("lora_" in k for k in out["fused"])
    for k, g in out["naive"].items():
        assert g.abs().sum() > 0
        assert torch.allclose(out["fused"][k], g, atol=1e-6), k


def test_bf16_lora_matches_the_fp32_reference(tiny_model_dir):
    """--dtype bf16: frozen weights and the computation in bf16, the LoRA weights (and so AdamW's state) in fp32.
    Against fp32: next-token log-probabilities within 0.05 and one update's LoRA gradients within 5% (relative
    L2 norm of the difference); bf16 keeps 8 bits of mantissa, so ~1% per matmul is expected."""
    from plumbing import models
    loaded = {dtype: models.load_model(tiny_model_dir, "lora", "cpu", lora_rank=4, lora_dropout=0.0, dtype=dtype)[0]
              for dtype in ("fp32", "bf16")}
    ref, half = loaded["fp32"], loaded["bf16"]
    assert all(p.dtype == torch.float32 for p in half.parameters() if p.requires_grad)  # what AdamW updates
    assert half.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    torch.manual_seed(0)
    with torch.no_grad():  # the same LoRA weights in both, with a nonzero B so the adapters matter
        for (name, p), q in zip(ref.named_parameters(), half.parameters()):
            if p.requires_grad:
                p.normal_(0, 0.3) if "lora_B" in name else None
                q.copy_(p)
    rollouts = [{"prompt_ids": [3, 4, 5, 6], "answer_ids": [7 + i % 5] * (4 + i) + [0]} for i in range(6)]
    batch = sm.training_batch(rollouts, 0)
    ref.eval(), half.eval()
    with torch.no_grad():
        logp = [F.log_softmax(m(input_ids=batch[0], attention_mask=batch[1]).logits.float(), -1) for m in (ref, half)]
    assert (logp[0] - logp[1]).abs().max() < 0.05
    grads = []
    for model in (ref, half):
        nll, n = sm.answer_nll(model, *batch, 1.0, "fused")
        (nll / n).backward()
        grads.append({k: p.grad.float() for k, p in model.named_parameters() if p.requires_grad})
    for k, g in grads[0].items():
        assert (grads[1][k] - g).norm() <= 0.05 * g.norm() + 1e-6, k
