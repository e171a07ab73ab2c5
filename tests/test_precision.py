"""Every device computes in its own native precision: bf16 on a GPU of compute capability 8.0+, fp16 with loss
scaling on an older one (a T4 emulates bf16), fp32 on a CPU without native bf16; the compiled static-cache sampler
only where Inductor takes the dtype. GPUs are faked here by their compute capability."""
import argparse

import pytest
import torch

import sept_mini as sm
from plumbing import cli, memory, models

T4, A100, H100 = (7, 5), (8, 0), (9, 0)


@pytest.mark.parametrize("capability, dtype", [(T4, "fp16"), ((7, 0), "fp16"), (A100, "bf16"), ((8, 6), "bf16"),
                                               (H100, "bf16")])
def test_a_gpu_gets_bf16_only_where_it_computes_it_natively(capability, dtype):
    assert cli.native_dtype("cuda", capability) == dtype


def test_a_cpu_gets_bf16_only_with_avx512_bf16_or_amx(monkeypatch):
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    assert cli.native_dtype("cpu") == "fp32"
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: True)
    assert cli.native_dtype("cpu") == "bf16"


def test_the_auto_dtype_of_a_t4_is_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli, "cuda_capability", lambda: T4)
    args = cli.parse_args(["--model", "./some-folder", "--dataset", "toy", "--eval-dataset", "toy"])
    assert (args.device, args.finetune, args.dtype) == ("cuda", "qlora", "fp16")
    monkeypatch.setattr(cli, "cuda_capability", lambda: A100)
    assert cli.parse_args(["--model", "./some-folder", "--dataset", "toy", "--eval-dataset", "toy"]).dtype == "bf16"


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_qlora_computes_in_the_chosen_dtype(tiny_model_dir, monkeypatch, dtype, torch_dtype):
    """bnb_4bit_compute_dtype follows the dtype rule (bitsandbytes' fast 4-bit path on a T4 is fp16 only)."""
    from transformers import AutoModelForCausalLM
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here: the arguments are what this test reads")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Exception):
        models.load_model(tiny_model_dir, "qlora", "cpu", dtype=dtype)
    assert seen["dtype"] == torch_dtype and seen["quantization_config"].bnb_4bit_compute_dtype == torch_dtype


@pytest.mark.parametrize("capability, dtype, static_cache", [(T4, "fp16", False), (A100, "bf16", True),
                                                             (H100, "bf16", True)])
def test_the_plan_names_the_dtype_and_compiles_the_sampler_only_from_sm80(qwen05_shape, capability,
                                                                          dtype, static_cache):
    import plan_cards  # experiments/plan_cards.py: the plan sept_mini.py makes on a card faked by memory and capability
    plan = plan_cards.card_plan(qwen05_shape, 15, capability)  # a 15 GB card: the default 6 GB budget
    assert plan.dtype == dtype and plan.sampler == "fast" and plan.static_cache is static_cache
    assert plan.scaler.is_enabled() is (dtype == "fp16")  # loss scaling with fp16 only
    if dtype == "fp16":
        assert "fp16: this GPU has no native bf16 (compute capability 7.5)" in plan.text
        assert "dynamic KV cache (no compiled static cache below compute capability 8.0)" in plan.text
    else:
        assert f"bf16 (compute capability {capability[0]}.{capability[1]})" in plan.text
        assert "dynamic KV cache" not in plan.text


def test_a_cpu_plan_never_compiles_a_static_cache(qwen05_shape):
    args = argparse.Namespace(device="cpu", dtype="fp32", memory_budget_gb=16, sampler="auto", grad_checkpointing="auto",
                              micro_batch_tokens=None, gen_batch_size=None, max_new_tokens=256, finetune="lora",
                              model=qwen05_shape)
    plan = memory.plan_memory(args, qwen05_shape)
    assert not plan.static_cache and not plan.scaler.is_enabled()


def fp16_lora(tiny_model_dir):
    model, _ = models.load_model(tiny_model_dir, "lora", "cpu", lora_rank=4, dtype="fp16")
    assert next(p for n, p in model.named_parameters() if "lora_A" not in n).dtype == torch.float16
    return model


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_an_fp16_update_that_overflows_is_skipped_counted_and_changes_no_weight(tiny_model_dir):
    model = fp16_lora(tiny_model_dir)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained)  # LoRA weights (and AdamW's state) stay fp32
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    plan = memory.Plan("plain", "fp16", 8, 10 ** 6, False, False, scaler=models.LossScaler("fp16", "cpu"))
    data = [{"prompt_ids": [4, 5, 6], "answer_ids": [7 + i % 5] * (3 + i) + [0]} for i in range(6)]
    update = lambda: sm.sept_update(model, optimizer, scheduler, data, 1.0, 0, "fused", 10 ** 6, scaler=plan.scaler)

    before, scale = lora_weights(model), plan.scaler.get_scale()
    hook = trained[0].register_hook(lambda grad: grad * float("inf"))  # one gradient overflows
    loss, _ = update()
    hook.remove()
    assert all(torch.equal(before[n], p) for n, p in lora_weights(model).items())  # not applied
    assert plan.scaler.get_scale() == scale / 2 and plan.take_changes() == {"fp16_skipped_updates": 1}
    assert torch.isfinite(torch.tensor(loss))  # the loss itself was finite: the guard for that is not what acted

    update()  # the same update without the overflow is applied, and not counted
    assert any(not torch.equal(before[n], p) for n, p in lora_weights(model).items())
    assert plan.take_changes() == {"fp16_skipped_updates": 0}


def test_an_fp32_or_bf16_run_has_no_loss_scaling():
    for dtype in ("fp32", "bf16"):
        scaler = models.LossScaler(dtype, "cpu")
        assert not scaler.is_enabled()
        loss = torch.tensor(2.0)
        assert scaler.scale(loss) is loss  # passed through
    assert memory.Plan("plain", "fp32", 8, 100, False, False).take_changes() == {}  # no fp16 column in the rows


def test_the_cards_table_plans_each_card_and_labels_its_time_an_estimate(capsys, monkeypatch):
    import sys
    import plan_cards
    monkeypatch.setattr(sys, "argv", ["plan_cards.py"])
    plan_cards.main()
    out = capsys.readouterr().out
    t4 = next(line for line in out.splitlines() if line.startswith("T4"))
    assert "fp16: this GPU has no native bf16" in t4 and "dynamic KV cache" in t4
    assert out.count("an estimate, not a measurement") == len(plan_cards.CARDS)
