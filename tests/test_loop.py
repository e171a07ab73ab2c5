"""The SePT loop end to end on a tiny model: updates, LoRA/QLoRA, resume, and bad input."""
import json
import os

import pytest
import torch

import sept_mini as sm
from plumbing import cli, console, data, models
from conftest import BENCHMARKS, comparable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(model_dir, out, *extra):
    return ["--model", model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(out),
            "--rounds", "2", "--prompts-per-round", "4", "--max-new-tokens", "10", "--eval-every", "0",
            "--lr", "1e-2", *extra]


def weights(path):
    from safetensors.torch import load_file
    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    return {k: v for f in files for k, v in load_file(os.path.join(path, f)).items()}


def test_one_round_changes_the_weights_full(tiny_model_dir, tmp_path):
    rows = sm.main(tiny_args(tiny_model_dir, tmp_path, "--finetune", "full", "--rounds", "1"))
    before, after = weights(tiny_model_dir), weights(tmp_path / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    row = rows[-1]
    for key in ("round", "tau_sample", "loss", "answer_len", "truncated", "gen_tokens_per_s", "train_tokens_per_s"):
        assert key in row
    assert row["round"] == 1 and row["tau_sample"] == 0.6 and row["loss"] > 0


@pytest.mark.parametrize("finetune", ["lora", "qlora"])
def test_lora_and_qlora_run_a_round_and_change_their_trainable_weights(tiny_model_dir, tmp_path, finetune):
    model, _ = models.load_model(tiny_model_dir, finetune, "cpu", lora_rank=4)
    initial = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert initial and all("lora_" in k for k in initial)
    if finetune == "qlora":
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    sm.main(tiny_args(tiny_model_dir, tmp_path, "--finetune", finetune, "--rounds", "1", "--lora-rank", "4"))
    from peft import PeftModel
    reloaded = PeftModel.from_pretrained(models.load_model(tiny_model_dir, "full", "cpu")[0], str(tmp_path / "final"))
    trained = {k.replace(".default", ""): v for k, v in reloaded.named_parameters() if "lora_B" in k}
    assert trained and any(v.abs().sum() > 0 for v in trained.values())  # lora_B starts at zero


def test_qlora_keeps_layers_of_odd_width_out_of_4bit_and_trains(odd_width_model_dir, tmp_path, capsys):
    """bitsandbytes' NF4 blocks are 64 inputs wide; on AVX512-BF16 CPUs its kernel crashes on in_features 32.
    Such layers stay in full precision (said once), the rest is 4-bit, and a round runs."""
    import bitsandbytes as bnb
    model, _ = models.load_model(odd_width_model_dir, "qlora", "cpu", lora_rank=4)
    assert "kept out of 4-bit" in capsys.readouterr().err
    base = {n: m for n, m in model.named_modules() if n.endswith(("q_proj.base_layer", "down_proj.base_layer"))}
    assert base and all(isinstance(m, bnb.nn.Linear4bit) == n.endswith("down_proj.base_layer") for n, m in base.items())
    assert not isinstance(model.get_output_embeddings(), bnb.nn.Linear4bit)
    rows = sm.main(tiny_args(odd_width_model_dir, tmp_path, "--finetune", "qlora", "--rounds", "1", "--lora-rank", "4"))
    assert rows[-1]["round"] == 1 and rows[-1]["loss"] > 0


def test_gradient_checkpointing_with_peft_gives_nonzero_lora_grads(tiny_model_dir):
    model, tok = models.load_model(tiny_model_dir, "lora", "cpu", lora_rank=4, grad_checkpointing=True)
    assert model.is_gradient_checkpointing
    model.train()
    batch = sm.training_batch([{"prompt_ids": [3, 4, 5], "answer_ids": [6, 7, 0]}], 0)
    nll, n = sm.answer_nll(model, *batch, 1.0, "fused")
    nll.backward()
    lora_b = [p.grad for k, p in model.named_parameters() if "lora_B" in k]
    assert lora_b and all(g is not None for g in lora_b) and sum(g.abs().sum() for g in lora_b) > 0


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_next_rounds_exactly(tiny_model_dir, tmp_path, monkeypatch):
    args = ["--finetune", "full", "--rounds", "4", "--save-every", "1", "--eval-every", "2", "--eval-size", "4"]
    full = sm.main(tiny_args(tiny_model_dir, tmp_path / "a", *args))

    real_update, calls = sm.sept_update, {"n": 0}

    def killed_in_round_3(*a, **k):  # the process dies mid-round 3, after round 2's checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_update(*a, **k)
    monkeypatch.setattr(sm, "sept_update", killed_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        sm.main(tiny_args(tiny_model_dir, tmp_path / "b", *args))
    monkeypatch.setattr(sm, "sept_update", real_update)
    resumed = sm.main(["--out", str(tmp_path / "b"), "--resume"])
    strip = comparable  # speeds and peak memory differ between any two runs; everything else must be equal
    assert strip(resumed) == strip(full)
    on_disk = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["round"] for r in on_disk] == [0, 1, 2, 3, 4]  # no duplicate rows from the killed round
    assert strip(on_disk) == strip(full)


def test_offline_ablation_samples_once_from_the_initial_model(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    real = sm.rollout
    monkeypatch.setattr(sm, "rollout", lambda *a, **k: seen.append(k.get("desc")) or real(*a, **k))
    sm.main(tiny_args(tiny_model_dir, tmp_path, "--finetune", "full", "--offline", "--rounds", "3"))
    assert seen == ["round 1 sampling", "round 2 sampling", "round 3 sampling"]  # all before any update


def test_qlora_without_4bit_support_is_a_clear_error(monkeypatch, capsys):
    import bitsandbytes.functional as bnbf

    def broken(*a, **k):
        raise RuntimeError("no 4-bit kernels for this device")
    monkeypatch.setattr(bnbf, "quantize_4bit", broken)
    with pytest.raises(SystemExit) as e, console.one_line_errors("sept_mini.py"):
        models.check_4bit("cpu")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--finetune lora" in err


def test_warns_when_temperatures_are_coupled_or_inverted(capsys, tmp_path):
    cli.parse_args(["--tau-sample", "1.0", "--out", str(tmp_path)])
    assert "coupled" in capsys.readouterr().err
    cli.parse_args(["--tau-sample", "1.3", "--out", str(tmp_path)])
    assert "inverted" in capsys.readouterr().err
    cli.parse_args(["--out", str(tmp_path)])
    assert "warning" not in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(BENCHMARKS), reason="needs ../shared/data/benchmarks beside the checkout")
def test_verl_parquet_questions_load():
    qs = data.load_questions(os.path.join(BENCHMARKS, "math500.parquet"))
    assert len(qs) == 500 and qs[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert qs[0]["question"].startswith("Convert the point $(0,3)$")


@pytest.mark.slow
def test_a_round_that_ends_a_minute_after_the_last_checkpoint_is_saved(tiny_model_dir, tmp_path, monkeypatch):
    """A real model's round takes minutes on a CPU: a kill must not cost finished rounds, whatever --save-every."""
    from plumbing import rundir
    real_update = sm.sept_update

    def killed_in_round_2(*a, **k):
        if killed_in_round_2.calls == 1:
            raise KeyboardInterrupt  # the process dies in round 2's update
        killed_in_round_2.calls += 1
        return real_update(*a, **k)
    for every_s, saved in ((60, None), (0, 1)):  # rounds of a second: none saved; rounds "of a minute": round 1 saved
        killed_in_round_2.calls = 0
        monkeypatch.setattr(rundir, "CHECKPOINT_EVERY_S", every_s)
        monkeypatch.setattr(sm, "sept_update", killed_in_round_2)
        out = tmp_path / f"every-{every_s}"
        with pytest.raises(KeyboardInterrupt):
            sm.main(tiny_args(tiny_model_dir, out, "--rounds", "3", "--save-every", "100"))
        ckpt = out / "ckpt.pt"
        assert (torch.load(ckpt, weights_only=False)["round"] if ckpt.exists() else None) == saved
    monkeypatch.setattr(sm, "sept_update", real_update)
    rows = sm.main(["--out", str(tmp_path / "every-0"), "--resume"])
    assert [r["round"] for r in rows] == [1, 2, 3]
