"""SePT's rivals in the same loop (--objective emft|grpo): each loss against its plain computation or a hand-computed
case, GRPO's advantage and its flat groups, and the clear errors around them."""
import json

import pytest
import torch
import torch.nn.functional as F

import sept_mini as sm
from conftest import tiny_qwen
from test_loss import batch_with_padding_and_empty_row, grads  # three right-padded rows, the last one masked
from plumbing import cli


ENTROPY = {"fused": sm.answer_entropy_fused, "naive": sm.answer_entropy_naive}


def plain_entropy_sum(hidden, weight, bias, tau):
    logp = F.log_softmax(F.linear(hidden, weight, bias) / tau, dim=-1)  # (N, V) at once
    return -(logp.exp() * logp).sum()


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("chunk", [4, 7, 1000])  # divides 28, does not, and larger than N
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_entropy_and_its_gradient_equal_the_plain_computation(tau, chunk, with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(28, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True) if with_bias else None
    params = [hidden, weight] + ([bias] if with_bias else [])
    chunked = sm.fused_entropy_sum(hidden, weight, bias, tau, chunk_size=chunk)
    assert torch.allclose(chunked, plain_entropy_sum(hidden, weight, bias, tau), atol=1e-5, rtol=1e-6)
    g_chunked = grads(lambda: 3.0 * sm.fused_entropy_sum(hidden, weight, bias, tau, chunk_size=chunk), *params)
    g_plain = grads(lambda: 3.0 * plain_entropy_sum(hidden, weight, bias, tau), *params)
    for a, b in zip(g_chunked, g_plain):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_entropy_of_no_rows_is_zero_and_keeps_the_graph():
    weight = torch.randn(20, 8, requires_grad=True)
    total = sm.fused_entropy_sum(torch.zeros(0, 8, requires_grad=True), weight, None, 1.0)
    total.backward()
    assert total.item() == 0.0 and weight.grad is not None and weight.grad.abs().sum() == 0


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("tau", [0.7, 1.0])
def test_answer_entropy_fused_equals_naive_through_a_model(tie, tau):
    model = tiny_qwen(30, tie=tie)
    out = {}
    for impl in ("fused", "naive"):
        model.zero_grad()
        total, n = ENTROPY[impl](model, *batch_with_padding_and_empty_row(30), tau)
        (total / n).backward()
        out[impl] = (total.item(), n, {k: p.grad.clone() for k, p in model.named_parameters()})
    assert out["fused"][1] == out["naive"][1] == 3 + 5  # the prefixes of rows 1 and 2's answer tokens
    assert abs(out["fused"][0] - out["naive"][0]) < 1e-4
    for k, g in out["naive"][2].items():
        assert torch.allclose(out["fused"][2][k], g, atol=1e-5), k


def test_emft_loss_is_the_mean_entropy_of_the_models_own_next_token_distributions():
    model = tiny_qwen(30)
    input_ids, mask, labels = batch_with_padding_and_empty_row(30)
    total, n = sm.answer_entropy_fused(model, input_ids, mask, labels, 1.0)
    probs = torch.softmax(model(input_ids=input_ids, attention_mask=mask).logits[:, :-1], -1)
    at_answers = probs[labels[:, 1:] != -100]  # (8, V)
    assert total.item() / n == pytest.approx(torch.distributions.Categorical(probs=at_answers).entropy().mean().item(),
                                             abs=1e-5)


def test_grpo_advantages_equal_a_hand_computed_case():
    # 2 questions x G = 4 answers, laid out as rollout() returns prompts * G: answer g to question q at 2 * g + q
    rewards = [1.0, 1.0,   0.0, 1.0,   0.0, 0.0,   0.0, 0.0]
    advantages = sm.grpo_advantages(rewards, n_questions=2)
    # question 0: rewards 1, 0, 0, 0: mean 1/4, std (Bessel) sqrt((9/16 + 3/16) / 3) = 1/2 -> 3/2, -1/2, -1/2, -1/2
    assert advantages[0::2] == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    # question 1: rewards 1, 1, 0, 0: mean 1/2, std sqrt(1/3) -> +-sqrt(3)/2
    assert advantages[1::2] == pytest.approx([0.8660254, 0.8660254, -0.8660254, -0.8660254], abs=1e-5)


def test_grpo_loss_equals_a_hand_computed_case():
    """sum over answers of advantage x (that answer's summed NLL), from per-answer NLLs of SePT's plain loss."""
    model = tiny_qwen(30)
    rollouts = [{"prompt_ids": [3, 4, 5], "answer_ids": [6, 7, 0], "advantage": 1.5},
                {"prompt_ids": [3, 4], "answer_ids": [8, 9, 10, 11, 0], "advantage": -0.5},
                {"prompt_ids": [3, 12], "answer_ids": [], "advantage": 2.0}]  # no answer tokens: its advantage is moot
    per_answer = [sm.sept_loss(model, [r], 0, 1.0, "naive")[0] for r in rollouts[:2]]
    hand = 1.5 * per_answer[0] - 0.5 * per_answer[1]
    for impl in ("naive", "fused"):
        loss, n = sm.grpo_loss(model, rollouts, 0, 1.0, impl)
        assert n == 8 and loss.item() == pytest.approx(hand.item(), abs=1e-5), impl
    model.zero_grad()
    hand.backward()
    hand_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    sm.grpo_loss(model, rollouts, 0, 1.0, "fused")[0].backward()
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, hand_grads[k], atol=1e-5), k


def test_fused_weighted_nll_matches_the_plain_weighted_sum():
    torch.manual_seed(0)
    hidden, weight = torch.randn(28, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    targets, weights = torch.randint(0, 50, (28,)), torch.randn(28)
    plain = lambda: (-F.log_softmax(F.linear(hidden, weight) / 0.8, -1).gather(1, targets[:, None]).squeeze(1)
                     * weights).sum()
    fused = lambda: sm.fused_nll_sum(hidden, weight, None, targets, 0.8, chunk_size=5, weights=weights)
    assert fused().item() == pytest.approx(plain().item(), abs=1e-4)
    for a, b in zip(grads(fused, hidden, weight), grads(plain, hidden, weight)):
        assert torch.allclose(a, b, atol=1e-5)


def grpo_rollouts(rewards_per_question, G=4):
    """prompts * G layout, answers of different lengths; advantages from the rewards."""
    Q = len(rewards_per_question)
    rollouts, rewards = [], []
    for g in range(G):
        for q in range(Q):
            rollouts.append({"prompt_ids": [3, 4 + q, 5], "answer_ids": [6 + g, 7 + q, 8 + g % 2, 0][:2 + (g + q) % 3],
                             "truncated": False})
            rewards.append(rewards_per_question[q][g])
    for r, a in zip(rollouts, sm.grpo_advantages(rewards, Q)):
        r["advantage"] = a
    return rollouts


def update_gradients(model, rollouts):
    """The LoRA-free tiny model's gradient of one GRPO update's loss (the optimizer step itself skipped)."""
    model.zero_grad()
    n_answer = sum(len(r["answer_ids"]) for r in rollouts)
    (sm.grpo_loss(model, rollouts, 0, 1.0, "fused")[0] / n_answer).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_a_group_with_equal_rewards_contributes_zero_gradient():
    model = tiny_qwen(30)
    flat = grpo_rollouts([[1, 1, 1, 1], [0, 0, 0, 0]])  # every answer right, every answer wrong
    assert all(r["advantage"] == 0.0 for r in flat)
    assert all(g.abs().max() == 0 for g in update_gradients(model, flat).values())
    mixed = grpo_rollouts([[1, 0, 1, 0]])
    assert any(g.abs().max() > 0 for g in update_gradients(model, mixed).values())


def test_grpo_on_a_dataset_without_answers_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": f"{i}+1:"}) + "\n" for i in range(4)))
    with pytest.raises(SystemExit) as e:
        sm.main(["--model", tiny_model_dir, "--dataset", str(questions), "--eval-every", "0", "--finetune", "full",
                 "--objective", "grpo", "--rollouts", "2", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no answer column" in err[0] and "--objective sept or emft" in err[0]
    assert not (tmp_path / "run").exists()


def test_grpo_with_one_rollout_per_question_is_refused(tmp_path):
    from plumbing import UsageError
    with pytest.raises(UsageError, match="--rollouts"):
        cli.parse_args(["--objective", "grpo", "--out", str(tmp_path / "run")])


def test_rivals_sample_at_tau_one_and_sept_keeps_its_temperatures(tmp_path, capsys, tiny_model_dir):
    args = {o: cli.parse_args(["--objective", o, "--rollouts", "2", "--out", str(tmp_path / o)])
            for o in ("sept", "emft", "grpo")}
    assert args["sept"].tau_sample == 0.1 and args["emft"].tau_sample == args["grpo"].tau_sample == 1.0
    assert cli.parse_args(["--out", str(tmp_path / "d")]).tau_sample == 0.1 and args["sept"].objective == "sept"
    real = cli.parse_args(["--model", tiny_model_dir, "--dataset", "toy", "--out", str(tmp_path / "real")])
    assert real.tau_sample == 0.6 and real.anneal == "paper"  # real models: the paper's start and schedule
    assert "coupled" not in capsys.readouterr().err  # the rivals sample at tau 1 by design: no SePT warning


def tiny_run(model_dir, out, *extra):
    return sm.main(["--model", model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(out), "--rounds",
                    "3", "--prompts-per-round", "4", "--max-new-tokens", "10", "--eval-every", "0", "--lr", "1e-2",
                    "--finetune", "full", *extra])


def test_a_grpo_run_rewards_its_samples_and_counts_the_groups_without_signal(tiny_model_dir, tmp_path):
    rows = tiny_run(tiny_model_dir, tmp_path / "grpo", "--objective", "grpo", "--rollouts", "3")
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:  # a random model is never right: every group is flat and the update has nothing to follow
        assert r["reward"] == 0.0 and r["flat_group"] == 1.0 and r["loss"] == 0.0 and r["tau_sample"] == 1.0


def test_an_emft_run_lowers_the_entropy_it_trains_on(tiny_model_dir, tmp_path):
    rows = tiny_run(tiny_model_dir, tmp_path / "emft", "--objective", "emft", "--rounds", "6")
    assert rows[-1]["loss"] < rows[0]["loss"] and "reward" not in rows[0]
