"""Sampling done right: left padding, no hidden generation defaults, LoRA dropout off, EOS kept."""
import torch

import sept_mini as sm
from plumbing import models
from conftest import tiny_qwen


def load_tiny(tiny_model_dir, finetune="full"):
    return models.load_model(tiny_model_dir, finetune, "cpu")


def test_generation_pads_left_and_batching_does_not_change_answers(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    prompts = ["12+3:", "45+6-7+8-9:", "3:"]  # different lengths
    batched = sm.rollout(model, tok, prompts, 0.0, 12, batch_size=3)
    assert tok.padding_side == "left"
    for p, b in zip(prompts, batched):
        alone = sm.rollout(model, tok, [p], 0.0, 12, batch_size=1)[0]
        assert b["prompt_ids"] == tok.encode(p)  # padding stripped from the recorded prompt
        assert b["answer_ids"] == alone["answer_ids"]


def test_generation_ignores_model_generation_config_defaults(tiny_model_dir):
    """A model's generation_config (Qwen ships top_k, top_p, repetition_penalty) must not leak in:
    the scores generate samples from must be exactly logits / tau."""
    model, tok = load_tiny(tiny_model_dir)
    gc = model.generation_config
    gc.top_k, gc.top_p, gc.repetition_penalty, gc.temperature = 2, 0.3, 5.0, 0.01
    gc.min_new_tokens, gc.no_repeat_ngram_size, gc.typical_p, gc.min_p = 5, 1, 0.2, 0.5
    gc.suppress_tokens = [3, 4]
    tau = 0.7
    config = sm.generation_config(tau, 6, models.stop_token_ids(model, tok), tok.pad_token_id)
    enc = tok(["45+6-7+8-9:"], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, generation_config=config, output_scores=True, output_logits=True,
                         return_dict_in_generate=True)
    for scores, logits in zip(out.scores, out.logits):
        assert torch.allclose(scores, logits / tau, atol=1e-5)


def test_lora_dropout_is_off_while_sampling(tiny_model_dir):
    model, tok = models.load_model(tiny_model_dir, "lora", "cpu", lora_rank=4, lora_dropout=0.5)
    model.train()
    seen = []
    dropouts = [m for name, m in model.named_modules() if name.endswith("lora_dropout.default")]
    assert dropouts
    hooks = [d.register_forward_hook(lambda m, i, o: seen.append(m.training)) for d in dropouts]
    sm.rollout(model, tok, ["12+3:"], 1.0, 4)
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert model.training  # and training mode is restored for the update


def test_rollout_keeps_eos_when_pad_equals_eos_and_flags_truncation(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    assert tok.pad_token_id == tok.eos_token_id
    eos = tok.eos_token_id
    with torch.no_grad():  # make the model say "7" then EOS, whatever the prompt
        head = model.get_output_embeddings()
        head.weight.zero_()
        bias_like = torch.full((len(tok),), -30.0)
    calls = {"n": 0}

    def forced(module, inputs, output):
        logits = bias_like.clone().expand_as(output).clone()
        logits[..., tok.convert_tokens_to_ids("7")] = 0.0
        logits[..., eos] = -30.0 if calls["n"] == 0 else 0.0
        logits[..., tok.convert_tokens_to_ids("7")] = 0.0 if calls["n"] == 0 else -30.0
        calls["n"] += 1
        return logits
    h = head.register_forward_hook(forced)
    r = sm.rollout(model, tok, ["1:"], 1.0, 8)[0]
    calls["n"] = 0
    cut = sm.rollout(model, tok, ["1:"], 1.0, 1)[0]
    h.remove()
    assert r["answer_ids"] == [tok.convert_tokens_to_ids("7"), eos] and not r["truncated"]
    _, _, labels = sm.training_batch([r], tok.pad_token_id)
    assert labels[0, -1].item() == eos  # the stop token is trained on: the model learns to stop
    assert cut["truncated"] and cut["answer_ids"] == [tok.convert_tokens_to_ids("7")]


def test_prompt_templates(toy_tokenizer):
    assert sm.build_prompt(toy_tokenizer, "12+3-4+5-6", "system") == "12+3-4+5-6:"

    class Chat:  # records the messages a chat-template tokenizer receives
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            self.messages = messages
            return "prompt"
    chat = Chat()
    sm.build_prompt(chat, "What is 1+1?", "system")
    assert chat.messages == [{"role": "system", "content": sm.REASONING_PROMPT}, {"role": "user", "content": "What is 1+1?"}]
    sm.build_prompt(chat, "What is 1+1?", "user")
    assert chat.messages == [{"role": "user", "content": "What is 1+1?\n" + sm.REASONING_PROMPT}]


def test_a_worked_example_is_one_earlier_turn_asked_like_the_question():
    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            self.messages = messages
            return "prompt"
    chat, ask = Chat(), lambda q: q + "\n" + sm.REASONING_PROMPT
    sm.build_prompt(chat, "What is 2+2?", "user", ("What is 1+1?", "1 + 1 = 2. \\boxed{2}"))
    assert chat.messages == [{"role": "user", "content": ask("What is 1+1?")},
                             {"role": "assistant", "content": "1 + 1 = 2. \\boxed{2}"},
                             {"role": "user", "content": ask("What is 2+2?")}]
    sm.build_prompt(chat, "What is 2+2?", "system", ("What is 1+1?", "2"))
    assert chat.messages[0] == {"role": "system", "content": sm.REASONING_PROMPT} and len(chat.messages) == 4

    class Plain:  # no chat template: the example as an earlier Question/Answer pair
        chat_template = None
    assert sm.build_prompt(Plain(), "What is 2+2?", "user", ("What is 1+1?", "2")) == (
        f"{sm.REASONING_PROMPT}\n\nQuestion: What is 1+1?\nAnswer: 2\n\nQuestion: What is 2+2?\nAnswer:")


def test_stop_tokens_include_chat_end_of_turn(toy_tokenizer):
    model = tiny_qwen(len(toy_tokenizer))
    model.generation_config.eos_token_id = [5, 6]
    assert models.stop_token_ids(model, toy_tokenizer) == sorted({toy_tokenizer.eos_token_id, 5, 6})


def test_tau_schedule():
    assert sm.tau_sample_at(1, 90, 0.6, 1.0, "paper") == 0.6
    assert abs(sm.tau_sample_at(31, 90, 0.6, 1.0, "paper") - 0.8) < 1e-9  # halfway through the anneal
    assert sm.tau_sample_at(61, 90, 0.6, 1.0, "paper") == 1.0
    assert sm.tau_sample_at(90, 90, 0.6, 1.0, "paper") == 1.0
    assert all(sm.tau_sample_at(r, 90, 0.6, 1.0, "none") == 0.6 for r in (1, 45, 90))


def test_rollout_entropy_is_the_models_entropy_at_tau_1_along_its_own_answer(tiny_model_dir):
    """The label-free entropy signal: per answer token, the entropy of pi(. | prefix) at tau 1 (not at tau_sample),
    averaged over the answer, equal to a plain forward pass over prompt + answer."""
    model, tok = load_tiny(tiny_model_dir)
    torch.manual_seed(0)
    rollouts = sm.rollout(model, tok, ["12+3:", "45+6-7+8-9:"], 0.5, 10, batch_size=2)
    for r in rollouts:
        ids = torch.tensor([r["prompt_ids"] + r["answer_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(r["prompt_ids"]) - 1:-1].double()  # (answer, V): each answer token's
        p = logits.softmax(-1)
        want = -(p * logits.log_softmax(-1)).sum(-1).mean().item()
        assert abs(r["entropy"] - want) < 1e-4, (r["entropy"], want)
        assert r["text"] == tok.decode(r["answer_ids"], skip_special_tokens=True)


def test_the_entropy_meter_changes_no_sample(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    prompts = ["12+3:", "45+6-7+8-9:", "3:"]
    torch.manual_seed(1)
    metered = sm.rollout(model, tok, prompts, 1.0, 12, batch_size=3)
    config = sm.generation_config(1.0, 12, models.stop_token_ids(model, tok), tok.pad_token_id)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(1)
    plain = model.generate(**enc, generation_config=config)[:, enc.input_ids.shape[1]:].tolist()
    for r, row in zip(metered, plain):
        assert row[:len(r["answer_ids"])] == r["answer_ids"]
