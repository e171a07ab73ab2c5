"""sept_mini.py: SePT (Self-evolving Post-Training, arXiv 2510.18814) in one readable file.

A language model gets better at math by training on its own low-temperature samples: no reward,
no verifier, no teacher. Every round it samples answers at tau_sample, then does plain SFT on them
with the logits divided by tau_train. With tau_sample < tau_train this sharpens the model's own
preferences (SEPT.md, Theorem 1); with tau_sample = tau_train the expected gradient is zero.

    pip install torch==2.13.0 && pip install -r requirements.txt
    python sept_mini.py                                  # the toy world on a laptop CPU, ~4 min
    python sept_mini.py --tau-sample 1.0                 # coupled temperatures: no gain
    python sept_mini.py --model Qwen2.5-0.5B             # QLoRA on one GPU (hub access needed)
    python sept_mini.py --model ./my-model --dataset questions.parquet --finetune lora
    python sept_mini.py --out runs/x --resume            # continue a killed run

Reading order: temperature schedule, prompts, sampling (rollout), the loss (fused and naive), the
loop (main). Outputs land in --out: config.json, metrics.jsonl, samples.jsonl (two raw samples per
round, special tokens included), ckpt.pt, final/ (model or adapter).
"""
import argparse
import json
import math
import os
import random
import sys
import time
import warnings

import torch
import torch.nn.functional as F

REASONING_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
HUB_QUESTIONS = "agentica-org/DeepScaleR-Preview-Dataset"  # the paper's question pool (problem, answer)
HUB_EVAL = "HuggingFaceH4/MATH-500"
QUESTION_COLUMNS = ("problem", "question", "prompt", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth", "reward_model", "solution")  # first found wins


def die(message):
    """Bad input ends the run with one line naming the fix, and exit code 2."""
    print(f"sept_mini.py: error: {message}", file=sys.stderr)
    sys.exit(2)


# -----------------------------------------------------------------------------
# the temperature schedule (the one place that decides tau_sample)

def tau_sample_at(round_, rounds, tau_start, tau_train, anneal):
    """tau_sample for training round `round_` (1-based). 'paper': linear from tau_start to tau_train
    over the first two thirds of training, then equal to it (the paper's 3-epoch schedule, with 2 of
    annealing); 'none': constant."""
    if anneal == "none":
        return tau_start
    progress = (round_ - 1) / max(1, rounds)  # fraction of training done when this round starts
    return tau_start + (tau_train - tau_start) * min(1.0, progress / (2 / 3))


# -----------------------------------------------------------------------------
# questions and prompts

def load_questions(spec, split="train", limit=None, seed=0):
    """Questions as dicts {id, question, answer} from 'toy', a local .parquet/.jsonl/.json file
    (plain columns or verl format), or a hub dataset id."""
    if spec == "toy":
        import toy_world
        return toy_world.questions("test" if split == "test" else "train", limit or 20000, seed)
    import datasets
    datasets.disable_progress_bars()
    ext = os.path.splitext(spec)[1].lower()
    try:
        if ext in (".parquet", ".jsonl", ".json", ".csv"):
            if not os.path.isfile(spec):
                die(f"dataset file not found: {spec} (pass an existing .parquet/.jsonl file, 'toy', or a hub id)")
            kind = {".jsonl": "json", ".json": "json"}.get(ext, ext[1:])
            rows = datasets.load_dataset(kind, data_files=spec, split="train")
        else:
            if os.path.sep in spec and os.path.exists(spec) or spec.startswith((".", "/", "~")):
                die(f"dataset '{spec}' is not a .parquet/.jsonl/.json/.csv file")
            rows = datasets.load_dataset(spec, split=split)
    except SystemExit:
        raise
    except Exception as e:
        die(f"could not load dataset '{spec}' ({type(e).__name__}; no internet?): pass a local .parquet or .jsonl file")
    qcol = next((c for c in QUESTION_COLUMNS if c in rows.column_names), None)
    acol = next((c for c in ANSWER_COLUMNS if c in rows.column_names), None)
    if qcol is None:
        die(f"dataset '{spec}' has no question column (looked for {', '.join(QUESTION_COLUMNS)}; it has {', '.join(rows.column_names)})")
    out = []
    for i, row in enumerate(rows):
        q, a = row[qcol], row[acol] if acol else None
        if isinstance(q, list):  # verl: a list of chat messages; the question is the last user turn
            q = [m["content"] for m in q if m.get("role") == "user"][-1]
        if isinstance(a, dict):  # verl: reward_model = {ground_truth, style}
            a = a.get("ground_truth")
        if isinstance(a, list):  # OlympiadBench: several final answers
            a = ", ".join(map(str, a))
        if acol == "solution" and a is not None:  # a worked solution: its boxed answer is the gold
            import grading
            a = grading.extract_answer(a) or a
        out.append({"id": str(row.get("id", i)), "question": str(q), "answer": None if a is None else str(a)})
    if not out:
        die(f"dataset '{spec}' is empty")
    return out[:limit] if limit else out


def build_prompt(tokenizer, question, style):
    """The prompt template, in one place. 'system': the paper's reasoning sentence as the system
    message (Qwen base and Qwen-Math models); 'user': the model's own system prompt, the sentence
    appended to the question (instruct models). The toy tokenizer's template ignores the system turn."""
    if tokenizer.chat_template is None:
        return f"{REASONING_PROMPT}\n\nQuestion: {question}\nAnswer:"
    if style == "user":
        messages = [{"role": "user", "content": f"{question}\n{REASONING_PROMPT}"}]
    else:
        messages = [{"role": "system", "content": REASONING_PROMPT}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -----------------------------------------------------------------------------
# models

def resolve_model_name(name, cache_dir):
    """'toy' -> the cached toy model (built on first use); a folder stays; 'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'."""
    if name == "toy":
        import toy_world
        return toy_world.load_or_build(cache_dir)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        die(f"model folder not found: {name} (pass an existing folder, 'toy', or a hub id such as Qwen/Qwen2.5-0.5B)")
    if "/" not in name and name.lower().startswith("qwen"):
        return "Qwen/" + name
    return name


def check_4bit(device):
    """QLoRA needs bitsandbytes able to quantize to NF4 on this device; fail early and plainly if not."""
    try:
        import bitsandbytes.functional as bnbf
        bnbf.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as e:
        die(f"--finetune qlora needs bitsandbytes 4-bit support on {device} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:80] if str(e) else ''}); use --finetune lora or install bitsandbytes>=0.45")


def load_model(path, finetune, device, lora_rank=16, lora_dropout=0.05, grad_checkpointing=False):
    """(model, tokenizer). finetune: 'full' (fp32 weights, all trained), 'lora', 'qlora' (4-bit NF4
    base + LoRA), or 'none' (as stored, for evaluation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"dtype": torch.bfloat16 if device == "cuda" and finetune != "full" else torch.float32}
        if finetune == "qlora":
            from transformers import BitsAndBytesConfig
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"])
            kwargs["device_map"] = {"": device}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        die(f"could not load model '{path}' ({type(e).__name__}; unknown id or no internet?): pass a local folder or 'toy'")
    if finetune != "qlora":
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gc_kwargs = {"use_reentrant": False}  # the reentrant variant gives zero LoRA grads when inputs are frozen
    if finetune == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if finetune in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=lora_dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model, tokenizer


def stop_token_ids(model, tokenizer):
    """Every token that ends an answer: the tokenizer's EOS, the model's configured EOS ids, and the
    chat template's end-of-turn token (Qwen base models end a chat turn with <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


# -----------------------------------------------------------------------------
# sampling

def generation_config(tau, max_new_tokens, stop_ids, pad_id):
    """A complete sampling config. transformers fills every None field from the model's own
    generation_config (Qwen ships top_k=20, top_p=0.8, repetition_penalty=1.05) and then from global
    defaults (top_k=50), so each knob that changes the distribution is set to its neutral value."""
    from transformers import GenerationConfig
    return GenerationConfig(
        do_sample=tau > 0, temperature=tau if tau > 0 else 1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, min_length=0, min_new_tokens=0, num_beams=1, num_return_sequences=1,
        suppress_tokens=[], begin_suppress_tokens=[], max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True)


@torch.no_grad()
def rollout(model, tokenizer, prompts, tau, max_new_tokens, batch_size=64, stop_ids=None, desc=None):
    """Sample one answer per prompt at temperature tau (0 = greedy) with HF generate.
    Returns a list of {prompt_ids, answer_ids, truncated}; answer_ids end with the stop token unless
    the answer was cut at max_new_tokens."""
    from tqdm.auto import tqdm
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    config = generation_config(tau, max_new_tokens, stop_ids, tokenizer.pad_token_id)
    was_training = model.training
    model.eval()  # LoRA dropout off: we sample from the model we train, not a noisier one
    tokenizer.padding_side = "left"  # right padding would put pad tokens between prompt and answer
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=desc is None):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen = model.generate(**enc, generation_config=config)
        for row, mask in zip(gen, enc.attention_mask):
            prompt_ids = row[:enc.input_ids.shape[1]][mask.bool()].tolist()
            answer = row[enc.input_ids.shape[1]:].tolist()
            # cut at the FIRST stop token, and keep it: the model must learn to stop (pad may equal EOS)
            end = next((j for j, t in enumerate(answer) if t in stop_ids), None)
            out.append({"prompt_ids": prompt_ids, "answer_ids": answer[:end + 1] if end is not None else answer,
                        "truncated": end is None})
    model.train(was_training)
    return out


# -----------------------------------------------------------------------------
# the loss: -log pi(answer | prompt; tau_train), prompt masked, token mean

class FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum over N tokens of -log softmax((h W^T + b) / tau)[target], one chunk of tokens at a time.

    Never holds more than chunk x V logits. We compute each chunk's gradients already in the forward
    pass (the Liger-Kernel way) rather than recomputing the chunk's logits in backward: recomputing
    costs a 4th (N x H x V) matmul on top of the 3 both ways need, 33% more time, while keeping the
    gradients costs only grad_h (N x H) and grad_W (V x H, needed anyway when W is trained)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tau, chunk_size):
        # hidden (N, H), weight (V, H), bias (V,) or None, targets (N,)
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
            logits = F.linear(h, weight, bias).float().div_(tau)  # (C, V), fp32 whatever the weights are
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            row_max = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(row_max).exp_()  # in place: one (C, V) buffer serves as logits and probs
            sum_exp = probs.sum(dim=1, keepdim=True)
            total += (row_max.squeeze(1) + sum_exp.log().squeeze(1) - target_logit).sum()
            if need_h or need_w or need_b:
                grad = probs.div_(sum_exp)  # softmax
                grad[torch.arange(len(t), device=t.device), t] -= 1.0
                grad.div_(tau)  # d loss / d (h W^T + b): the temperature scales the gradient too
                if need_h:
                    grad_h[s:s + chunk_size] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(grad.T, h.float())  # accumulate in fp32, in place: no (V, H) temporary
                if need_b:
                    grad_b += grad.sum(0)
            logits = probs = grad = None  # free this chunk's (C, V) buffer before the next is allocated
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_out
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_out).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None, None


def fused_nll_sum(hidden, weight, bias, targets, tau, chunk_size=None):
    """Summed tau-scaled NLL of targets given final hidden states, without [N x V] logits."""
    chunk_size = chunk_size or max(1, 2 ** 24 // weight.shape[0])  # <= 16M logits (64 MB fp32) at a time
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph (and DDP/optimizers) happy
    return FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, tau, chunk_size)


def training_batch(rollouts, pad_id):
    """Right-padded (prompt + answer) ids with labels on answer tokens only, EOS included.
    Right padding keeps every row's positions 0.. as they were when generate sampled it."""
    length = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rollouts)
    input_ids = torch.full((len(rollouts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rollouts), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rollouts), length), dtype=torch.long)
    for i, r in enumerate(rollouts):
        p, a = len(r["prompt_ids"]), len(r["answer_ids"])
        input_ids[i, :p + a] = torch.tensor(r["prompt_ids"] + r["answer_ids"])
        labels[i, p:p + a] = torch.tensor(r["answer_ids"])  # by position, never by token id: pad may be EOS
        attention_mask[i, :p + a] = 1
    return input_ids, attention_mask, labels


def answer_nll(model, input_ids, attention_mask, labels, tau_train, loss_impl="fused"):
    """(sum of -log pi(answer token | prefix; tau_train), number of answer tokens) for one batch."""
    targets = labels[:, 1:]  # (B, T-1): token t is predicted from position t-1
    mask = targets != -100
    if loss_impl == "naive":  # the plain reference: full (B, T, V) logits, then log_softmax
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        logp = F.log_softmax(logits.float() / tau_train, dim=-1)
        return -logp[mask].gather(1, targets[mask][:, None]).sum(), int(mask.sum())
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    # only answer positions reach the vocabulary matmul: prompt and padding never do
    return fused_nll_sum(hidden[:, :-1][mask], head.weight, head.bias, targets[mask], tau_train), int(mask.sum())


def sept_update(model, optimizer, scheduler, rollouts, tau_train, pad_id, loss_impl, micro_batch, clip=1.0):
    """One optimizer update of SFT at tau_train on these rollouts: token mean over all their answer
    tokens, accumulated over micro-batches. Returns (loss, tokens processed)."""
    model.train()
    n_answer = sum(len(r["answer_ids"]) for r in rollouts)
    total, n_tokens = 0.0, 0
    for i in range(0, len(rollouts), micro_batch):
        input_ids, attention_mask, labels = (x.to(model.device) for x in training_batch(rollouts[i:i + micro_batch], pad_id))
        nll, _ = answer_nll(model, input_ids, attention_mask, labels, tau_train, loss_impl)
        (nll / max(1, n_answer)).backward()
        total += nll.item()
        n_tokens += int(attention_mask.sum())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(1, n_answer), n_tokens


# -----------------------------------------------------------------------------
# evaluation inside the loop (eval_math.py does the full protocol)

def evaluate(model, tokenizer, questions, style, max_new_tokens, samples, batch_size, seed):
    """Held-out pass@1 at tau = 1 (mean over `samples` draws per question) and greedy accuracy."""
    import grading
    prompts = [build_prompt(tokenizer, q["question"], style) for q in questions]
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)  # evaluation neither uses nor disturbs the training run's randomness
        greedy = rollout(model, tokenizer, prompts, 0.0, max_new_tokens, batch_size, desc="eval greedy")
        sampled = rollout(model, tokenizer, prompts * samples, 1.0, max_new_tokens, batch_size, desc="eval tau=1")
    right = lambda rs, qs: [grading.grade(tokenizer.decode(r["answer_ids"], skip_special_tokens=True), q["answer"])
                            for r, q in zip(rs, qs)]
    return {"pass@1": sum(right(sampled, questions * samples)) / len(sampled),
            "greedy": sum(right(greedy, questions)) / len(greedy)}


# -----------------------------------------------------------------------------
# checkpoints: written atomically, so a kill at any moment leaves the last good one

def trainable_state(model):
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(path, model, optimizer, scheduler, round_, offline_data):
    state = {"round": round_, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "offline_data": offline_data,
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer, scheduler):
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        die(f"checkpoint {path} does not match this model ({len(missing)} weights missing): use a new --out")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state["model"].items():
            params[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["round"], state["offline_data"]


# -----------------------------------------------------------------------------
# the command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="SePT: self-training on low-temperature samples (arXiv 2510.18814).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="toy", help="'toy', a local folder, or a hub id (Qwen2.5-0.5B -> Qwen/Qwen2.5-0.5B)")
    p.add_argument("--dataset", default=None, help="question pool: 'toy', a .parquet/.jsonl file (verl format ok) "
                   f"or a hub id; default: toy for the toy model, {HUB_QUESTIONS} otherwise")
    p.add_argument("--eval-dataset", default=None, help=f"held-out questions; default: the toy test set, {HUB_EVAL} otherwise")
    p.add_argument("--finetune", choices=["full", "lora", "qlora"], default=None,
                   help="default: full for the toy model; qlora with CUDA, lora without, for other models")
    p.add_argument("--rounds", type=int, default=100, help="refresh rounds M: sample, then train")
    p.add_argument("--prompts-per-round", type=int, default=64, help="questions sampled per round")
    p.add_argument("--rollouts", type=int, default=1, help="answers sampled per question (G)")
    p.add_argument("--updates-per-round", type=int, default=1, help="optimizer updates per round (mu); the round's rollouts are split among them")
    p.add_argument("--tau-sample", type=float, default=0.6, help="sampling temperature (start value when annealed)")
    p.add_argument("--tau-train", type=float, default=1.0, help="temperature inside the training loss")
    p.add_argument("--anneal", choices=["paper", "none"], default=None,
                   help="paper: tau_sample rises linearly to tau_train over the first 2/3 of rounds, then stays "
                   "there (coupled); none: constant. Default: none for the toy model (see README), paper otherwise")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate; default 1e-4 for the toy model (full), 1e-5 for LoRA/QLoRA (unverified)")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warm-up, then constant (as in the paper)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--loss", choices=["fused", "naive"], default="fused", help="fused: chunked, never holds [tokens x vocab] logits; naive: the plain reference")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap; default 48 for the toy model, 1024 otherwise")
    p.add_argument("--gen-batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--micro-batch", type=int, default=64, help="rollouts per forward/backward (gradient accumulation)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward to save memory")
    p.add_argument("--prompt-style", choices=["auto", "system", "user"], default="auto",
                   help="system: reasoning prompt as system message; user: appended to the question; auto: user if the model name says instruct")
    p.add_argument("--offline", action="store_true", help="ablation: sample every round's data once from the initial model, then train on it")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate every N rounds (and before and after); 0 turns evaluation off")
    p.add_argument("--eval-size", type=int, default=256, help="held-out questions per evaluation")
    p.add_argument("--eval-samples", type=int, default=2, help="samples per question for held-out pass@1")
    p.add_argument("--save-every", type=int, default=10, help="write the resumable checkpoint every N rounds")
    p.add_argument("--seed", type=int, default=0, help="seed for question order, sampling and initialisation")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="runs/sept", help="run directory")
    p.add_argument("--cache-dir", default="~/.cache/sept-mini", help="where the toy model is built and cached")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (its saved settings are used)")
    args = p.parse_args(argv)
    if args.resume:
        path = os.path.join(args.out, "config.json")
        if not os.path.isfile(path):
            die(f"--resume: no run to resume in {args.out} (no config.json): start it without --resume")
        with open(path) as f:
            saved = json.load(f)["args"]
        args = argparse.Namespace(**{**saved, "resume": True, "out": args.out})
    validate(args)
    return args


def validate(args):
    for name in ("tau_sample", "tau_train"):
        if not getattr(args, name) > 0:
            die(f"--{name.replace('_', '-')} must be > 0 (got {getattr(args, name)}); greedy decoding cannot be trained on")
    for name in ("rounds", "prompts_per_round", "rollouts", "updates_per_round", "gen_batch_size", "micro_batch",
                 "eval_size", "eval_samples", "save_every", "lora_rank"):
        if getattr(args, name) < 1:
            die(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.eval_every < 0 or args.warmup_steps < 0:
        die("--eval-every and --warmup-steps must be >= 0")
    if args.updates_per_round > args.prompts_per_round * args.rollouts:
        die("--updates-per-round cannot exceed prompts-per-round x rollouts (each update needs rollouts)")
    if args.lr is not None and not args.lr > 0:
        die(f"--lr must be > 0 (got {args.lr})")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        die(f"--device {args.device} is not available here: use --device cpu")
    toy = args.model == "toy"
    args.finetune = args.finetune or ("full" if toy else "qlora" if args.device == "cuda" else "lora")
    args.dataset = args.dataset or ("toy" if toy else HUB_QUESTIONS)
    args.eval_dataset = args.eval_dataset or ("toy" if toy else HUB_EVAL)
    args.anneal = args.anneal or ("none" if toy else "paper")
    args.lr = args.lr or (1e-4 if args.finetune == "full" else 1e-5)
    args.max_new_tokens = args.max_new_tokens or (48 if toy else 1024)
    if args.prompt_style == "auto":
        args.prompt_style = "user" if "instruct" in args.model.lower() else "system"
    if args.tau_sample >= args.tau_train:
        kind = "coupled (equal)" if args.tau_sample == args.tau_train else "inverted (tau_sample > tau_train)"
        print(f"warning: temperatures are {kind}: the theory predicts "
              f"{'no expected learning signal' if args.tau_sample == args.tau_train else 'a flatter, worse model'}", file=sys.stderr)


# -----------------------------------------------------------------------------
# the loop (Algorithm 1)

def main(argv=None):
    args = parse_args(argv)
    import huggingface_hub
    import transformers
    transformers.utils.logging.set_verbosity_error()  # our generation config is explicit on purpose
    huggingface_hub.utils.logging.set_verbosity_error()  # a failed hub load is reported in one line, below
    torch.manual_seed(args.seed)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.finetune == "qlora":
        check_4bit(args.device)
    model_path = resolve_model_name(args.model, args.cache_dir)
    pool = load_questions(args.dataset, "train", seed=args.seed)
    heldout = load_questions(args.eval_dataset, "test", args.eval_size, seed=args.seed) if args.eval_every else []
    if args.eval_every and any(q["answer"] is None for q in heldout):
        die(f"eval dataset '{args.eval_dataset}' has no answer column: pass one with answers, or --eval-every 0")
    model, tokenizer = load_model(model_path, args.finetune, args.device, args.lora_rank,
                                  grad_checkpointing=args.grad_checkpointing)
    stop_ids = stop_token_ids(model, tokenizer)
    from tqdm.auto import tqdm
    os.makedirs(args.out, exist_ok=True)
    ckpt_path, metrics_path = os.path.join(args.out, "ckpt.pt"), os.path.join(args.out, "metrics.jsonl")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (args.warmup_steps + 1)))
    start, offline_data = 0, None
    if args.resume and os.path.isfile(ckpt_path):
        start, offline_data = load_checkpoint(ckpt_path, model, optimizer, scheduler)
        print(f"resumed {args.out} after round {start}")
    else:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({"args": vars(args), "model_path": model_path}, f, indent=1)
    # metrics rows after the checkpoint's round are redone, so drop them (a kill may have left some)
    rows = [json.loads(l) for l in open(metrics_path)] if args.resume and os.path.isfile(metrics_path) else []
    rows = [r for r in rows if r["round"] <= start]
    with open(metrics_path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(metrics_path + ".tmp", metrics_path)

    def log(row):
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def run_eval(round_):
        scores = evaluate(model, tokenizer, heldout, args.prompt_style, args.max_new_tokens,
                          args.eval_samples, args.gen_batch_size, seed=args.seed + 7919 * round_)
        tqdm.write(f"round {round_:4d} | held-out pass@1 (tau=1) {100 * scores['pass@1']:5.1f} | greedy {100 * scores['greedy']:5.1f}")
        return scores

    orders = {}  # epoch -> its seeded permutation of the pool

    def questions_for(round_):
        """The round's questions: consecutive slices of a seeded shuffle of the pool, epoch after epoch."""
        picked = []
        for k in range((round_ - 1) * args.prompts_per_round, round_ * args.prompts_per_round):
            epoch, i = divmod(k, len(pool))
            if epoch not in orders:
                orders[epoch] = random.Random(args.seed * 1000 + epoch).sample(range(len(pool)), len(pool))
            picked.append(pool[orders[epoch][i]])
        return picked

    def sample_round(round_):
        tau = tau_sample_at(round_, args.rounds, args.tau_sample, args.tau_train, args.anneal)
        prompts = [build_prompt(tokenizer, q["question"], args.prompt_style) for q in questions_for(round_)]
        torch.manual_seed(args.seed * 100_003 + round_)  # each round's randomness is its own: exact resume
        return tau, rollout(model, tokenizer, prompts * args.rollouts, tau, args.max_new_tokens,
                            args.gen_batch_size, stop_ids, desc=f"round {round_} sampling")

    if start == 0 and args.eval_every:
        log({"round": 0, **run_eval(0)})
    if args.offline and offline_data is None:  # the ablation: all data from the initial model, once
        offline_data = {r: sample_round(r) for r in range(1, args.rounds + 1)}

    for round_ in tqdm(range(start + 1, args.rounds + 1), desc="SePT rounds", initial=start, total=args.rounds):
        t0 = time.time()
        tau, rollouts = offline_data[round_] if args.offline else sample_round(round_)
        t1 = time.time()
        torch.manual_seed(args.seed * 100_003 + round_ + 50_000)  # dropout masks, if any
        random.Random(round_).shuffle(rollouts)  # rollouts of one question spread over the updates
        losses, n_tokens = [], 0
        for chunk in range(args.updates_per_round):
            part = rollouts[chunk::args.updates_per_round]
            loss, n = sept_update(model, optimizer, scheduler, part, args.tau_train, tokenizer.pad_token_id,
                                  args.loss, args.micro_batch)
            losses.append(loss)
            n_tokens += n
        t2 = time.time()
        with open(os.path.join(args.out, "samples.jsonl"), "a") as f:  # a few raw samples: is the template right?
            for r in rollouts[:2]:
                f.write(json.dumps({"round": round_, "prompt": tokenizer.decode(r["prompt_ids"]),
                                    "answer": tokenizer.decode(r["answer_ids"]), "truncated": r["truncated"]}) + "\n")
        answer_tokens = sum(len(r["answer_ids"]) for r in rollouts)
        row = {"round": round_, "tau_sample": round(tau, 4), "loss": sum(losses) / len(losses),
               "lr": scheduler.get_last_lr()[0], "answer_len": answer_tokens / len(rollouts),
               "truncated": sum(r["truncated"] for r in rollouts) / len(rollouts),
               "gen_tokens_per_s": answer_tokens / max(t1 - t0, 1e-9) if not args.offline else None,
               "train_tokens_per_s": n_tokens / max(t2 - t1, 1e-9)}
        if args.device == "cuda":
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if args.eval_every and (round_ % args.eval_every == 0 or round_ == args.rounds):
            row.update(run_eval(round_))
        log(row)
        if round_ % args.save_every == 0 or round_ == args.rounds:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, round_, offline_data)

    final = os.path.join(args.out, "final")
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    evals = [r for r in rows if "pass@1" in r]
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        print(f"\n{'held-out':<22}{'round ' + str(first['round']):>10}{'round ' + str(last['round']):>10}{'change':>9}")
        for key, name in (("pass@1", "pass@1 (tau=1)"), ("greedy", "greedy accuracy")):
            print(f"{name:<22}{100 * first[key]:>10.1f}{100 * last[key]:>10.1f}{100 * (last[key] - first[key]):>+9.1f}")
    print(f"\nsaved {final} ({'adapter' if args.finetune != 'full' else 'model'}); metrics in {metrics_path}")
    return rows


if __name__ == "__main__":
    main()
