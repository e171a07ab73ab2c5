"""sept_mini.py: SePT (Self-evolving Post-Training, arXiv 2510.18814) in one readable file.

A language model gets better at math by training on its own low-temperature samples: no reward,
no verifier, no teacher. Every round it samples answers at tau_sample, then does plain SFT on them
with the logits divided by tau_train. With tau_sample < tau_train this sharpens the model's own
preferences (docs/theory.md); with tau_sample = tau_train the expected gradient is zero.

    pip install torch==2.13.0 && pip install -r requirements.txt
    python sept_mini.py                                  # the toy world on a laptop CPU, ~4 min
    python sept_mini.py --tau-sample 1.0                 # coupled temperatures: no gain
    python sept_mini.py --model Qwen2.5-0.5B             # QLoRA on one GPU (hub access needed)
    python sept_mini.py --model ./my-model --dataset questions.parquet --finetune lora
    python sept_mini.py --out runs/x --resume            # continue a killed run
    torchrun --nproc-per-node 8 sept_mini.py --model Qwen2.5-Math-1.5B   # data parallel, one GPU per process

Reading order: temperature schedule, prompts, sampling (rollout), the loss (fused and naive), the
loop (main). Outputs land in --out: config.json, metrics.jsonl, samples.jsonl (two raw samples per
round, special tokens included), ckpt.pt, final/ (model or adapter).
"""
import argparse
import contextlib
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
# The toy recipe, tuned over 5 seeds (each with its own base model): 150 rounds of 128 questions at lr 5e-5.
# At lr 1e-4 and 64 questions the run over-sharpened and lost greedy accuracy on most seeds; a smaller
# step with more questions per round keeps what the base knew (README, "Table 5 in miniature").
TOY_LR, TOY_ROUNDS, TOY_PROMPTS = 5e-5, 150, 128
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
    """Questions as dicts {id, question, answer} from 'toy', a local .parquet/.jsonl/.json/.csv file
    (plain columns or verl format), or a hub dataset id. Every failure is one line naming the fix."""
    if spec == "toy":
        import toy_world
        return toy_world.questions("test" if split == "test" else "train", limit or 20000, seed)
    rows = read_rows(spec, split)
    if not rows:
        die(f"dataset '{spec}' is empty (no rows): pass a file with questions")
    columns = list(rows[0])
    qcol = next((c for c in QUESTION_COLUMNS if c in columns), None)
    acol = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if qcol is None:
        die(f"dataset '{spec}' has no question column (looked for {', '.join(QUESTION_COLUMNS)}; it has {', '.join(columns)})")
    out = []
    for i, row in enumerate(rows):
        q, a = row.get(qcol), row.get(acol) if acol else None
        if isinstance(q, list):  # verl: a list of chat messages; the question is the last user turn
            q = [m["content"] for m in q if isinstance(m, dict) and m.get("role") == "user"][-1:] or [None]
            q = q[0]
        if isinstance(a, dict):  # verl: reward_model = {ground_truth, style}
            a = a.get("ground_truth")
        if isinstance(a, list):  # OlympiadBench: several final answers
            a = ", ".join(map(str, a))
        if acol == "solution" and a is not None:  # a worked solution: its boxed answer is the gold
            import grading
            a = grading.extract_answer(a) or a
        if not isinstance(q, str) or not q.strip():
            die(f"dataset '{spec}', row {i + 1}: the question ('{qcol}') is missing or empty: fix or drop that row")
        out.append({"id": str(row.get("id", i)), "question": q, "answer": None if a is None else str(a)})
    return out[:limit] if limit else out


def read_rows(spec, split):
    """The rows of a local file or a hub dataset, as a list of dicts."""
    ext = os.path.splitext(spec)[1].lower()
    if ext == ".jsonl":  # read by hand: a bad line gets its line number
        if not os.path.isfile(spec):
            die(f"dataset file not found: {spec} (pass an existing .parquet/.jsonl file, 'toy', or a hub id)")
        rows = []
        with open(spec, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        die(f"dataset file {spec}, line {n}: not valid JSON (one JSON object per line expected)")
                    if not isinstance(rows[-1], dict):
                        die(f"dataset file {spec}, line {n}: a JSON object with a question field expected")
        return rows
    if ext in (".parquet", ".json", ".csv"):
        if not os.path.isfile(spec):
            die(f"dataset file not found: {spec} (pass an existing .parquet/.jsonl file, 'toy', or a hub id)")
        if os.path.getsize(spec) == 0:
            die(f"dataset file {spec} is empty (0 bytes): pass a file with questions")
        try:
            if ext == ".parquet":
                import pyarrow.parquet
                return pyarrow.parquet.read_table(spec).to_pylist()
            with open(spec, encoding="utf-8") as f:
                if ext == ".csv":
                    import csv
                    return list(csv.DictReader(f))
                rows = json.load(f)  # .json: a list of objects
                assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), "a list of objects expected"
                return rows
        except Exception as e:
            die(f"could not read {spec} as {ext[1:]} ({type(e).__name__}): check that the file is complete")
    if os.path.exists(spec) or spec.startswith((".", "/", "~")):
        die(f"dataset '{spec}' is not a .parquet/.jsonl/.json/.csv file")
    check_hub_reachable(spec, "dataset", "a local .parquet or .jsonl file")
    import datasets
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(spec, split=split).to_list()
    except Exception as e:
        die(f"could not load dataset '{spec}' from the hub ({type(e).__name__}: unknown id or split '{split}'?): "
            "pass a local .parquet or .jsonl file")


def check_hub_reachable(repo_id, kind, instead):
    """Fail in a second, not after half a minute of retries, when the hub cannot be reached.
    A model or dataset already in the local hub cache needs no network."""
    import socket
    from urllib.parse import urlparse
    import huggingface_hub
    from huggingface_hub import constants
    repo_type = "dataset" if kind == "dataset" else "model"
    if huggingface_hub.try_to_load_from_cache(repo_id, "config.json" if kind == "model" else "README.md",
                                             repo_type=repo_type) is not None or constants.HF_HUB_OFFLINE:
        return  # cached (transformers/datasets will find it), or offline mode: the libraries answer at once
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        die(f"cannot reach {host} to fetch {kind} '{repo_id}' (no internet?): pass {instead}")


def round_questions(pool, round_, per_round, seed):
    """Round `round_`'s questions (1-based): consecutive slices of a seeded shuffle of the pool, epoch after
    epoch, so every question is seen once per epoch. Under torchrun each rank takes rank_share() of them."""
    picked, orders = [], {}
    for k in range((round_ - 1) * per_round, round_ * per_round):
        epoch, i = divmod(k, len(pool))
        if epoch not in orders:
            orders[epoch] = random.Random(seed * 1000 + epoch).sample(range(len(pool)), len(pool))
        picked.append(pool[orders[epoch][i]])
    return picked


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

def resolve_model_name(name, cache_dir, seed=0):
    """'toy' -> the cached toy model of this build seed (built on first use); a folder stays;
    'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'. A hub id is checked (its config fetched) before anything heavy."""
    if name == "toy":
        import toy_world
        return toy_world.load_or_build(cache_dir, seed)
    if os.path.isdir(os.path.expanduser(name)):
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            die(f"model folder {path} has no config.json: pass a folder saved with save_pretrained, 'toy', or a hub id")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name):
        die(f"model folder not found: {name} (pass an existing folder, 'toy', or a hub id such as Qwen/Qwen2.5-0.5B)")
    if "/" not in name and name.lower().startswith("qwen"):
        name = "Qwen/" + name
    check_hub_reachable(name, "model", "a local model folder (or 'toy')")
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:
        die(f"could not load model '{name}' ({type(e).__name__}: unknown id?): pass a hub id such as "
            "Qwen/Qwen2.5-0.5B, a local folder, or 'toy'")
    return name


def check_4bit(device):
    """QLoRA needs bitsandbytes able to quantize to NF4 on this device; fail early and plainly if not."""
    try:
        import bitsandbytes.functional as bnbf
        bnbf.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as e:
        die(f"--finetune qlora needs bitsandbytes 4-bit support on {device} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:80] if str(e) else ''}); use --finetune lora or install bitsandbytes>=0.45")


def layers_kept_out_of_4bit(path):
    """Linear layers that stay in 16/32-bit under QLoRA: the output layer (as transformers does by
    default) and every layer whose in_features is not a multiple of 64. bitsandbytes quantizes in
    blocks of 64 inputs, and its CPU kernel (on AVX512-BF16 CPUs) cannot repack other widths.
    Returns (names, unfit) where unfit lists (name, in_features) of the odd-width layers."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):  # the shapes only: no memory, no weights read
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    head = skeleton.get_output_embeddings()
    linears = [(n, m) for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    unfit = [(n, m.in_features) for n, m in linears if m is not head and m.in_features % 64]
    return [n for n, m in linears if m is head] + [n for n, _ in unfit], unfit


def load_model(path, finetune, device, lora_rank=16, lora_dropout=0.05, grad_checkpointing=False):
    """(model, tokenizer). finetune: 'full' (fp32 weights, all trained), 'lora', 'qlora' (4-bit NF4
    base + LoRA), or 'none' (as stored, for evaluation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"dtype": torch.bfloat16 if device == "cuda" and finetune != "full" else torch.float32}
        if finetune == "qlora":
            from transformers import BitsAndBytesConfig
            skip, unfit = layers_kept_out_of_4bit(path)
            if unfit and ddp_rank() == 0:
                print(f"note: {len(unfit)} linear layers have in_features not a multiple of 64 (e.g. {unfit[0][0]}, "
                      f"{unfit[0][1]}): kept out of 4-bit, trained with LoRA on full-precision weights", file=sys.stderr)
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"], llm_int8_skip_modules=skip if unfit else None)
            kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else device}  # this rank's GPU
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        die(f"could not load model '{path}' ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}): "
            "pass a folder saved with save_pretrained, a hub id, or 'toy'")
    if finetune != "qlora":
        model.to(device)
    for module in model.modules():
        # bitsandbytes 0.50 on AVX512-BF16 CPUs repacks 4-bit weights for an inference-only kernel on the
        # first no-grad forward (our sampling); training then runs through that kernel and fails. Keep
        # the one layout that both sampling and training support.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
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

def generation_config(tau, max_new_tokens, stop_ids, pad_id, static_cache=False):
    """A complete sampling config. transformers fills every None field from the model's own
    generation_config (Qwen ships top_k=20, top_p=0.8, repetition_penalty=1.05) and then from global
    defaults (top_k=50), so each knob that changes the distribution is set to its neutral value."""
    from transformers import GenerationConfig
    return GenerationConfig(
        do_sample=tau > 0, temperature=tau if tau > 0 else 1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, min_length=0, min_new_tokens=0, num_beams=1, num_return_sequences=1,
        suppress_tokens=[], begin_suppress_tokens=[], max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True,
        # the fast sampler on CUDA: a preallocated cache, with which generate compiles the forward pass
        cache_implementation="static" if static_cache else None)


@torch.no_grad()
def rollout(model, tokenizer, prompts, tau, max_new_tokens, batch_size=64, stop_ids=None, desc=None, static_cache=False):
    """Sample one answer per prompt at temperature tau (0 = greedy) with HF generate.
    Returns a list of {prompt_ids, answer_ids, truncated}; answer_ids end with the stop token unless
    the answer was cut at max_new_tokens."""
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    config = generation_config(tau, max_new_tokens, stop_ids, tokenizer.pad_token_id, static_cache)
    was_training = model.training
    model.eval()  # LoRA dropout off: we sample from the model we train, not a noisier one
    tokenizer.padding_side = "left"  # right padding would put pad tokens between prompt and answer
    out = []
    for i in progress(range(0, len(prompts), batch_size), desc, inner=True):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False,
                        pad_to_multiple_of=64 if static_cache else None)  # few prompt lengths: few compiled shapes
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


def progress(iterable, desc, total=None, initial=0, inner=False):
    """One progress display per phase, readable wherever it lands: tqdm bars in a terminal; in Jupyter
    the outer loops only (an inner bar per generate call would add an output each); in a log file
    (stderr redirected) plain lines at most every 30 s, with no escape codes and no inner bars."""
    total = len(iterable) if total is None else total
    if desc is None or (inner and not sys.stderr.isatty()) or ddp_rank() != 0:  # under torchrun, rank 0 reports
        return iterable
    if "ipykernel" in sys.modules or sys.stderr.isatty():
        try:  # tqdm.auto: widget bars in Jupyter; they need ipywidgets, without which tqdm.auto warns and falls back
            import ipywidgets  # noqa: F401
            from tqdm.auto import tqdm
        except ImportError:
            from tqdm import tqdm
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=not inner)
    return _plain_progress(iterable, desc, total, initial)


def _plain_progress(iterable, desc, total, initial, every_s=30.0):
    t0 = last = time.time()
    for n, item in enumerate(iterable, initial + 1):
        yield item
        if time.time() - last >= every_s or n == total:
            print(f"{desc}: {n}/{total} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
            last = time.time()


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
                grad_lp = grad.to(weight.dtype)  # (C, V) in the weights' dtype (the same tensor in fp32)
                if need_h:
                    grad_h[s:s + chunk_size] = (grad_lp @ weight).to(hidden.dtype)
                if need_w:
                    if weight.dtype == torch.float32:
                        grad_w.addmm_(grad.T, h.float())  # in place: no (V, H) temporary
                    else:  # bf16/fp16: each chunk's matmul on the fast half-precision path, as naive's autograd
                        grad_w.add_(grad_lp.T @ h)  # does, and the sum over chunks in fp32 (a fp32 matmul is ~10x slower)
                if need_b:
                    grad_b += grad.sum(0)
            logits = probs = grad = grad_lp = None  # free this chunk's (C, V) buffers before the next
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


def default_chunk_size(weight):
    """Tokens per chunk. On CPU 16M logits (64 MB fp32) at a time: larger chunks only cost cache misses.
    On CUDA 128M logits (~0.5 GB fp32, 883 tokens at Qwen's 151,936): small chunks leave the GPU idle
    between matmuls; at about 1,000 tokens the fused loss ran at naive's speed with a frozen output
    layer on an H100 (bf16, N = 16,384), at 3% of naive's memory."""
    return max(1, (2 ** 27 if weight.is_cuda else 2 ** 24) // weight.shape[0])


def fused_nll_sum(hidden, weight, bias, targets, tau, chunk_size=None):
    """Summed tau-scaled NLL of targets given final hidden states, without [N x V] logits."""
    chunk_size = chunk_size or default_chunk_size(weight)
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


def micro_batches(rollouts, max_tokens):
    """Consecutive groups of rollouts whose padded size (rows x longest row) stays within max_tokens, so
    memory is planned in tokens: answers run from 10 to 1,024 tokens. A row longer than the budget goes alone."""
    groups, current, longest = [], [], 0
    for r in rollouts:
        n = len(r["prompt_ids"]) + len(r["answer_ids"])
        if current and max(longest, n) * (len(current) + 1) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(r)
        longest = max(longest, n)
    return groups + [current] if current else groups


def sept_update(model, optimizer, scheduler, rollouts, tau_train, pad_id, loss_impl, micro_batch_tokens, clip=1.0, ddp=None):
    """One optimizer update of SFT at tau_train on these rollouts: token mean over all their answer
    tokens, accumulated over micro-batches. Under torchrun each rank passes its own rollouts and `ddp`
    (the model wrapped by wrap_ddp): the mean is then over every rank's answer tokens, so the update
    equals a single process's on the union. Returns (loss, tokens processed here)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)  # a retry after out-of-memory starts clean
    n_answer = global_sum(sum(len(r["answer_ids"]) for r in rollouts))  # all ranks' answer tokens
    scale = (ddp_world() if ddp else 1) / max(1, n_answer)  # DDP averages gradients over ranks: undo it, sum
    forward = ddp or (lambda *batch: answer_nll(model, *batch))
    groups = micro_batches(rollouts, micro_batch_tokens)
    total, n_tokens = 0.0, 0
    for i, group in enumerate(groups):
        input_ids, attention_mask, labels = (x.to(model.device) for x in training_batch(group, pad_id))
        # under DDP gradients are averaged once per update, in the last micro-batch's backward; ranks may
        # have different numbers of micro-batches (their answers differ in length)
        with ddp.no_sync() if ddp and i < len(groups) - 1 else contextlib.nullcontext():
            nll, _ = forward(input_ids, attention_mask, labels, tau_train, loss_impl)
            (nll * scale).backward()
        total += nll.item()
        n_tokens += int(attention_mask.sum())
    total = global_sum(total)
    if not math.isfinite(total):  # a step on inf/nan gradients would destroy the weights: refuse it
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"loss {total / max(1, n_answer)}")
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(1, n_answer), n_tokens


# -----------------------------------------------------------------------------
# evaluation inside the loop (eval_math.py does the full protocol)

def evaluate(model, tokenizer, questions, style, max_new_tokens, samples, batch_size, seed, static_cache=False):
    """Held-out pass@1 at tau = 1 (mean over `samples` draws per question) and greedy accuracy."""
    import grading
    prompts = [build_prompt(tokenizer, q["question"], style) for q in questions]
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)  # evaluation neither uses nor disturbs the training run's randomness
        greedy = rollout(model, tokenizer, prompts, 0.0, max_new_tokens, batch_size, desc="eval greedy", static_cache=static_cache)
        sampled = rollout(model, tokenizer, prompts * samples, 1.0, max_new_tokens, batch_size, desc="eval tau=1",
                          static_cache=static_cache)
    right = lambda rs, qs: [grading.grade(tokenizer.decode(r["answer_ids"], skip_special_tokens=True), q["answer"])
                            for r, q in zip(rs, qs)]
    return {"pass@1": sum(right(sampled, questions * samples)) / len(sampled),
            "greedy": sum(right(greedy, questions)) / len(greedy)}


# -----------------------------------------------------------------------------
# the memory plan, out-of-memory recovery and the fast sampler: engineering a reader may skip

GPU_BUDGET_GB = 6.0  # so the defaults run on an 8 GB card; a smaller card gets 80% of its memory


def plan_memory(args, model_path):
    """Resolve the flags left to 'auto' from the model's shape and the device; return the plan as one line.
    CUDA: gradient checkpointing on for real models, micro-batches of 8,192 tokens, and generation batches whose
    KV cache fits a quarter of the budget. CPU: no checkpointing, 16,384 tokens, 64 prompts (memory is rarely
    the limit there)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cuda, dtype_bytes = args.device == "cuda", 2 if args.device == "cuda" else 4
    kv_per_token = 2 * text.num_hidden_layers * getattr(text, "num_key_value_heads", text.num_attention_heads) * head_dim * dtype_bytes
    budget = min(GPU_BUDGET_GB, 0.8 * torch.cuda.get_device_properties(0).total_memory / 2 ** 30) if cuda else None
    merged_gb = n_params * dtype_bytes / 2 ** 30  # the fast sampler's copy of the policy
    if args.sampler == "auto":
        fits = not cuda or merged_gb < 0.4 * budget  # a 0.5B model's 1 GB copy fits; a 7B model's 14 GB does not
        args.sampler = "fast" if args.finetune in ("lora", "qlora") and fits else "plain"
    if args.grad_checkpointing == "auto":
        args.grad_checkpointing = "on" if cuda and args.model != "toy" else "off"
    args.micro_batch_tokens = args.micro_batch_tokens or (8192 if cuda else 16384)
    seq_tokens = args.max_new_tokens + 512  # answer cap plus a generous prompt
    if args.gen_batch_size is None:
        args.gen_batch_size = max(1, min(64, int(0.25 * budget * 2 ** 30 / (kv_per_token * seq_tokens)))) if cuda else 64
    weights_gb = n_params * (0.6 if args.finetune == "qlora" else dtype_bytes) / 2 ** 30
    kv_gb = args.gen_batch_size * seq_tokens * kv_per_token / 2 ** 30
    return (f"plan: {n_params / 1e6:.0f}M parameters, {args.finetune}, sampler {args.sampler}, generation batches of "
            f"{args.gen_batch_size} prompts, micro-batches of {args.micro_batch_tokens} tokens, gradient checkpointing "
            f"{args.grad_checkpointing}" + (f"; estimated GPU memory: weights {weights_gb:.1f} GB + sampler copy "
            f"{merged_gb if args.sampler == 'fast' else 0:.1f} GB + KV cache {kv_gb:.1f} GB, budget {budget:.1f} GB" if cuda else ""))


def halving_on_oom(run, size, what, flag, retry=True):
    """run(size), and on CUDA out-of-memory run(size // 2), ... down to 1, each retry said in one line.
    Returns (result, the size that worked); stops with one line when even 1 does not fit (no checkpoint is
    written mid-round, so the last one is intact). retry=False (a step with collectives under torchrun,
    where one rank cannot redo it alone) stops at the first out-of-memory."""
    while True:
        try:
            return run(size), size
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not retry:
                die(f"out of GPU memory {what} with {flag} {size} (under torchrun a rank cannot retry alone): pass "
                    f"{flag} {max(1, size // 2)} with --resume; the last checkpoint is intact")
            if size <= 1:
                die(f"out of GPU memory {what} even with {flag} 1: lower --max-new-tokens, or use --finetune qlora "
                    "or --sampler plain; the last checkpoint is intact, continue with --resume")
            size //= 2
            print(f"warning: out of GPU memory {what}: retrying with {flag} {size}", file=sys.stderr)


class MergedSampler:
    """The fast sampler: a plain copy of the policy for generate, its weights in the compute dtype with the
    current LoRA delta folded in (W = W0 + scaling * B A, NF4 weights dequantised), refreshed in place after
    each update so that compiled graphs and a static KV cache are reused. No peft wrapper, no per-step
    dequantisation, no dropout. --sampler plain samples with the training model itself (the reference)."""

    def __init__(self, peft_model, dtype):
        from transformers import AutoModelForCausalLM
        self.base = peft_model.get_base_model()
        self.model = AutoModelForCausalLM.from_config(self.base.config, dtype=dtype).to(self.base.device).eval()
        self.model.generation_config = self.base.generation_config
        self.lora_layers = [(n, m) for n, m in self.base.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
        with torch.no_grad():  # everything, once; refresh() then redoes the LoRA layers after each update
            for name, param in self.model.named_parameters():
                module_name, kind = name.rsplit(".", 1)
                source = self.base.get_submodule(module_name)
                source = getattr(source, "base_layer", source)
                param.copy_(dense_weight(source) if kind == "weight" else getattr(source, kind))
        self.refresh()

    @torch.no_grad()
    def refresh(self):
        for name, module in self.lora_layers:
            delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()  # (out, r) @ (r, in)
            merged = dense_weight(module.base_layer).float() + module.scaling["default"] * delta
            self.model.get_submodule(name).weight.copy_(merged)


def dense_weight(layer):
    """A linear layer's weight in full precision: 4-bit NF4 weights dequantised."""
    quant_state = getattr(layer.weight, "quant_state", None)
    if quant_state is None:
        return layer.weight
    import bitsandbytes.functional as bnbf
    return bnbf.dequantize_4bit(layer.weight.data, quant_state)


# -----------------------------------------------------------------------------
# data parallel under torchrun: each rank samples and trains on its share of every round, DDP averages the
# gradients. A plain `python sept_mini.py` never enters this section (world size 1, no process group).

def ddp_rank():
    import torch.distributed as dist
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def ddp_world():
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device):
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) with one device per rank. No-op alone."""
    if ddp_world() == 1:
        return
    import torch.distributed as dist
    if device == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            die(f"torchrun started more processes per node than this node has GPUs ({torch.cuda.device_count()}): "
                "lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    dist.barrier()  # every rank has checked its input before rank 0 writes anything


def rank_share(items, rank=None, world=None):
    """This rank's share of a list: every world-th item from its rank on. Disjoint, and together in order
    they are the list a single process would use."""
    rank, world = ddp_rank() if rank is None else rank, ddp_world() if world is None else world
    return items[rank::world]


def global_sum(*values):
    """Each number summed over all ranks, in one all-reduce (the numbers themselves in a single process).
    One number in, one number out; several in, a tuple out."""
    if ddp_world() > 1:
        import torch.distributed as dist
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        values = [type(v)(x) for v, x in zip(values, t.tolist())]
    return values[0] if len(values) == 1 else tuple(values)


def gather_objects(obj):
    """A list with every rank's obj, by rank ([obj] in a single process)."""
    if ddp_world() == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * ddp_world()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it may build the toy base or fill a download cache), then the others. While
    they wait, rank 0 uses every core (torchrun gives each process one thread; a toy base built with 1 and with 2
    threads came out bit-identical)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()  # wait for rank 0
        yield
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        yield
        torch.set_num_threads(threads)
        dist.barrier()  # let the others go


def finish_distributed():
    """Leave the process group cleanly: no collective in flight, nothing left holding it, then destroy it."""
    import gc
    import torch.distributed as dist
    dist.barrier()
    gc.collect()  # DDP's reducer sits in reference cycles; collected now, not during interpreter shutdown
    dist.destroy_process_group()


class AnswerLoss(torch.nn.Module):
    """The training forward as one module for DDP to wrap: the fused loss calls the decoder and the output
    layer directly, past model.forward, where DDP would not see it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, tau_train, loss_impl):
        return answer_nll(self.model, input_ids, attention_mask, labels, tau_train, loss_impl)


def wrap_ddp(model):
    """The model for sept_update under torchrun (None alone). DDP copies rank 0's weights to every rank at the
    start; from then on every rank applies the same averaged gradient, so the weights stay equal."""
    if ddp_world() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [torch.cuda.current_device()] if model.device.type == "cuda" else None
    return DistributedDataParallel(AnswerLoss(model), device_ids=device_ids)


# -----------------------------------------------------------------------------
# checkpoints: the newest two, each written atomically, so no kill and no single bad file loses the run

CHECKPOINTS = ("ckpt.pt", "ckpt.prev.pt")  # newest first


def trainable_state(model):
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(out, model, optimizer, scheduler, round_, offline_data, rows):
    """Everything a resumed run needs to continue exactly: weights being trained, optimizer, schedule,
    random states, the offline data (if any) and the metrics rows so far."""
    state = {"round": round_, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "offline_data": offline_data, "rows": rows,
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    path, prev = (os.path.join(out, name) for name in CHECKPOINTS)
    with open(path + ".tmp", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces anything
    if os.path.exists(path):
        os.replace(path, prev)  # a kill between the two replaces leaves ckpt.prev.pt: still resumable
    os.replace(path + ".tmp", path)


def load_checkpoint(out, model, optimizer, scheduler):
    """The newest usable checkpoint's state (restored into model, optimizer, scheduler and the random
    generators), falling back to the previous one with a one-line note; None if the run never saved one."""
    problems = []
    for name in CHECKPOINTS:
        path = os.path.join(out, name)
        if not os.path.exists(path):
            problems.append(f"{name} missing")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            params = dict(model.named_parameters())
            wanted = trainable_state(model)
            if set(state["model"]) != set(wanted) or any(state["model"][k].shape != v.shape for k, v in wanted.items()):
                raise ValueError("weights do not match this model")
            rows = state["rows"]
            assert isinstance(state["round"], int) and all(r["round"] <= state["round"] for r in rows)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except Exception as e:
            problems.append(f"{name} unreadable ({type(e).__name__})")
            continue
        with torch.no_grad():
            for k, v in state["model"].items():
                params[k].copy_(v)
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if problems:
            print(f"warning: {problems[0]}: resuming from {name} (round {state['round']}) instead", file=sys.stderr)
        return state
    if any("unreadable" in p for p in problems):
        die(f"--resume: no usable checkpoint in {out} ({'; '.join(problems)}): start the run again with --overwrite")
    return None


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read_jsonl_rows(path, upto_round):
    """Rows of a jsonl file up to a round; unreadable lines (a kill mid-write) are dropped."""
    rows = []
    for line in open(path) if os.path.isfile(path) else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= upto_round:
            rows.append(row)
    return rows


# -----------------------------------------------------------------------------
# the command line: every bad input is one line, found before anything heavy runs or anything is written

def build_parser():
    p = argparse.ArgumentParser(
        prog="sept_mini.py", allow_abbrev=False,
        description="SePT: self-training on the model's own low-temperature samples (arXiv 2510.18814). "
        "Each refresh round samples answers at tau_sample, then trains on them with the logits divided by "
        "tau_train (tau_sample < tau_train sharpens the model; see docs/theory.md).")
    a = p.add_argument
    a("--model", default="toy", help="'toy', a local folder, or a hub id (Qwen2.5-0.5B means Qwen/Qwen2.5-0.5B) (default: toy)")
    a("--dataset", default=None, help="question pool: 'toy', a .parquet/.jsonl/.json/.csv file (verl format ok) or a hub "
      f"id (default: toy for the toy model, {HUB_QUESTIONS} otherwise)")
    a("--eval-dataset", default=None, help=f"held-out questions with answers (default: the toy test set for the toy model, {HUB_EVAL} otherwise)")
    a("--finetune", choices=["full", "lora", "qlora"], default=None,
      help="what is trained (default: full for the toy model; otherwise qlora with CUDA, lora without)")
    a("--rounds", type=int, default=None, help="refresh rounds (the paper's M): each samples fresh answers, then trains "
      f"(default: {TOY_ROUNDS} for the toy model, 100 otherwise)")
    a("--prompts-per-round", type=int, default=None, help=f"questions sampled per round (default: {TOY_PROMPTS} for the toy "
      "model, 64 otherwise)")
    a("--rollouts", type=int, default=1, help="answers sampled per question (the paper's G) (default: 1)")
    a("--updates-per-round", type=int, default=1, help="optimizer updates per round (the paper's mu); the round's answers "
      "are split among them (default: 1)")
    a("--tau-sample", type=float, default=0.6, help="sampling temperature tau_s; its start value when annealed (default: 0.6)")
    a("--tau-train", type=float, default=1.0, help="temperature tau_t inside the training loss (default: 1.0)")
    a("--anneal", choices=["paper", "none"], default=None,
      help="paper: tau_sample rises linearly to tau_train over the first 2/3 of rounds, then stays there (coupled); "
      "none: constant (default: none for the toy model, paper otherwise)")
    a("--lr", type=float, default=None, help=f"AdamW learning rate (default: {TOY_LR:g} for the toy model, 1e-5 for LoRA/QLoRA, unverified)")
    a("--warmup-steps", type=int, default=10, help="linear learning-rate warm-up in updates, then constant as in the paper (default: 10)")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    a("--loss", choices=["fused", "naive"], default="fused",
      help="fused: chunked, never holds the [tokens x vocab] logits; naive: the plain reference (default: fused)")
    a("--max-new-tokens", type=int, default=None, help="answer length cap in tokens (default: 48 for the toy model, 1024 otherwise)")
    a("--gen-batch-size", type=int, default=None, help="prompts per generate call (default: planned: 64, fewer on a GPU "
      "when their KV cache would not fit a quarter of the memory budget)")
    a("--micro-batch-tokens", type=int, default=None, help="padded tokens per forward/backward; gradients accumulate over "
      "micro-batches (default: planned: 8192 on a GPU, 16384 on CPU)")
    a("--sampler", choices=["auto", "fast", "plain"], default="auto", help="fast: sample from a merged copy of the LoRA "
      "policy (static cache and compiled on CUDA); plain: from the training model itself, the reference (default: auto = "
      "fast for LoRA/QLoRA when the copy fits in memory, else plain)")
    a("--lora-rank", type=int, default=16, help="LoRA rank r, with alpha = 2r (default: 16)")
    a("--grad-checkpointing", choices=["auto", "on", "off"], default="auto", help="recompute activations in backward to "
      "save memory (default: auto = on for real models on a GPU, off otherwise)")
    a("--prompt-style", choices=["auto", "system", "user"], default="auto",
      help="system: the reasoning prompt as system message; user: appended to the question; auto: user if the model "
      "name contains 'instruct', else system (default: auto)")
    a("--offline", action="store_true", help="ablation: sample every round's data once from the initial model, then train on it (default: off)")
    a("--eval-every", type=int, default=10, help="held-out evaluation every N rounds, and before and after; 0 turns it off (default: 10)")
    a("--eval-size", type=int, default=256, help="held-out questions per evaluation (default: 256)")
    a("--eval-samples", type=int, default=2, help="samples per question for held-out pass@1 at tau=1 (default: 2)")
    a("--save-every", type=int, default=10, help="write the resumable checkpoint every N rounds (default: 10)")
    a("--seed", type=int, default=0, help="seed for question order, sampling and initialisation; for the toy model it also "
      "picks the toy base model (each seed builds its own) (default: 0)")
    a("--device", default="auto", help="auto, cpu or cuda (default: auto, cuda when available)")
    a("--out", default="runs/sept", help="run directory (default: runs/sept)")
    a("--overwrite", action="store_true", help="start a new run in an --out that already holds one, replacing it (default: off)")
    a("--resume", action="store_true", help="continue the run in --out with its saved settings; add --rounds N to extend a "
      "finished run to N rounds (default: off)")
    a("--cache-dir", default=None, help="where the toy model is built and cached (default: $XDG_CACHE_HOME/sept-mini, else ~/.cache/sept-mini)")
    return p


def parse_args(argv=None):
    p = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    given = {a.dest for a in p._actions for o in a.option_strings if any(x == o or x.startswith(o + "=") for x in argv)}
    if args.overwrite and args.resume:
        die("--overwrite and --resume contradict each other: pass one")
    args = resumed_args(p, args, given) if args.resume else args
    validate(args)
    if not args.resume:
        check_new_out(args)
    return args


def resumed_args(parser, args, given):
    """--resume: the saved settings of the run in --out. Only --rounds (extending it) and the memory knobs
    (--micro-batch-tokens, --gen-batch-size: how the same computation is split) may change."""
    path = os.path.join(args.out, "config.json")
    if not os.path.isfile(path):
        die(f"--resume: no run to resume in {args.out} (no config.json): start it without --resume")
    try:
        with open(path) as f:
            saved = json.load(f)["args"]
        assert isinstance(saved, dict) and isinstance(saved.get("rounds"), int)
    except Exception as e:
        die(f"--resume: {path} is unreadable ({type(e).__name__}): the run cannot be resumed; start it again with --overwrite")
    memory_knobs = {"micro_batch_tokens", "gen_batch_size"}
    changed = sorted(given - {"out", "resume", "rounds"} - memory_knobs)
    if changed:
        die(f"--resume continues {args.out} with its saved settings; only --rounds, --micro-batch-tokens and "
            "--gen-batch-size can change "
            f"(drop --{changed[0].replace('_', '-')}, or start a new run in another --out)")
    defaults = vars(parser.parse_args([]))
    resumed = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults},
                                    "resume": True, "overwrite": False, "out": args.out})
    if "rounds" in given and args.rounds != saved["rounds"]:
        if saved.get("offline"):
            die("--resume --rounds: an --offline run cannot be extended (its data was all sampled from the initial "
                "model up front): start a new run with the --rounds you want")
        resumed.rounds = args.rounds
    for name in memory_knobs & given:
        setattr(resumed, name, getattr(args, name))
    return resumed


def check_new_out(args):
    """A new run needs an --out it can create, and never silently replaces an earlier run."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        die(f"--out {out} is an existing file: pass a folder")
    if os.path.isfile(os.path.join(out, "config.json")) and not args.overwrite:
        die(f"--out {out} already holds a run: continue it with --resume, replace it with --overwrite, or pick another --out")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        die(f"--out {out}: {parent} is a file, not a folder: pass another --out")
    try:  # probe that a folder can be made here (permissions, read-only or virtual file systems), leaving nothing
        import tempfile
        os.rmdir(tempfile.mkdtemp(dir=parent))
    except OSError as e:
        die(f"--out {out} cannot be created ({e.strerror}): pass a writable folder")


def validate(args):
    """Finite, positive numbers where the code needs them; the defaults that depend on the model."""
    toy = args.model == "toy"
    args.rounds = (TOY_ROUNDS if toy else 100) if args.rounds is None else args.rounds
    args.prompts_per_round = (TOY_PROMPTS if toy else 64) if args.prompts_per_round is None else args.prompts_per_round
    for name in ("tau_sample", "tau_train", "lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            die(f"--{name.replace('_', '-')} must be a finite number > 0 (got {value})"
                + ("; greedy decoding cannot be trained on" if name == "tau_sample" and value == 0 else ""))
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        die(f"--weight-decay must be a finite number >= 0 (got {args.weight_decay})")
    for name in ("rounds", "prompts_per_round", "rollouts", "updates_per_round", "gen_batch_size", "micro_batch_tokens",
                 "eval_size", "eval_samples", "save_every", "lora_rank", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            die(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    for name in ("eval_every", "warmup_steps"):
        if getattr(args, name) < 0:
            die(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(args, name)})")
    if args.updates_per_round > args.prompts_per_round * args.rollouts:
        die("--updates-per-round cannot exceed prompts-per-round x rollouts (each update needs answers)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        die(f"--device {args.device} is not available here: use --device cpu")
    args.finetune = args.finetune or ("full" if toy else "qlora" if args.device == "cuda" else "lora")
    args.dataset = args.dataset or ("toy" if toy else HUB_QUESTIONS)
    args.eval_dataset = args.eval_dataset or ("toy" if toy else HUB_EVAL)
    args.anneal = args.anneal or ("none" if toy else "paper")
    args.lr = args.lr or (TOY_LR if args.finetune == "full" else 1e-5)
    args.max_new_tokens = (48 if toy else 1024) if args.max_new_tokens is None else args.max_new_tokens
    if args.prompt_style == "auto":
        args.prompt_style = "user" if "instruct" in args.model.lower() else "system"
    if args.tau_sample >= args.tau_train and not args.resume and ddp_rank() == 0:
        kind = "coupled (equal)" if args.tau_sample == args.tau_train else "inverted (tau_sample > tau_train)"
        print(f"warning: temperatures are {kind}: the theory predicts "
              f"{'no expected learning signal' if args.tau_sample == args.tau_train else 'a flatter, worse model'}", file=sys.stderr)


def quiet_libraries():
    """Our generation config is explicit on purpose, and a failed hub load is reported in one line."""
    import huggingface_hub
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # 'Loading weights' bars: instant for small models
    huggingface_hub.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        huggingface_hub.utils.disable_progress_bars()


# -----------------------------------------------------------------------------
# the loop (Algorithm 1)

def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    torch.manual_seed(args.seed)
    if args.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    rank, world = ddp_rank(), ddp_world()  # under torchrun: this process is rank `rank` of `world`
    if world > 1 and args.prompts_per_round // world * args.rollouts < args.updates_per_round:
        die(f"--prompts-per-round {args.prompts_per_round} split over {world} processes leaves some with fewer answers "
            f"than --updates-per-round {args.updates_per_round}: raise --prompts-per-round or use fewer processes")
    init_distributed(args.device)
    main_rank = rank == 0  # writes the run directory and reports; every rank samples and trains its share
    rank_seed = 1_000_003 * rank  # each rank draws its own samples; rank 0 draws what a single process would

    # everything that can fail on bad input comes first, cheapest first; nothing is written before it passed
    if args.finetune == "qlora":
        check_4bit(args.device)
    with rank_zero_first():  # one rank builds the toy base or fills the download cache, then the others read it
        model_path = resolve_model_name(args.model, args.cache_dir, args.seed)
        pool = load_questions(args.dataset, "train", seed=args.seed)
        heldout = load_questions(args.eval_dataset, "test", args.eval_size, seed=args.seed) if args.eval_every else []
    if any(q["answer"] is None for q in heldout):
        die(f"eval dataset '{args.eval_dataset}' has no answer column: pass one with answers, or --eval-every 0")
    plan = plan_memory(args, model_path)
    if main_rank:
        print(plan + (f"; {world} processes (torchrun), each with its share of every round" if world > 1 else ""))
    model, tokenizer = load_model(model_path, args.finetune, args.device, args.lora_rank,
                                  grad_checkpointing=args.grad_checkpointing == "on")
    stop_ids = stop_token_ids(model, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (args.warmup_steps + 1)))
    start, offline_data, rows = 0, None, []
    state = load_checkpoint(args.out, model, optimizer, scheduler) if args.resume else None
    if state is not None:
        start, offline_data, rows = state["round"], state["offline_data"], state["rows"]
        if isinstance(offline_data, dict):  # saved before runs could have several processes
            offline_data = [offline_data]
        if args.rounds < start:
            die(f"--rounds {args.rounds} is below the {start} rounds this run has done: pass a larger --rounds")
        if args.rounds == start:
            if main_rank:
                print(f"{args.out} already finished its {start} rounds: add --rounds N (more than {start}) to extend it")
            if world > 1:
                finish_distributed()
            return rows
        if offline_data is not None and len(offline_data) != world:
            die(f"--resume: this --offline run was sampled by {len(offline_data)} processes: resume it with as many")
        if main_rank:
            print(f"resumed {args.out} after round {start}" + (f", now running to round {args.rounds}" if start else ""))
    elif args.resume and main_rank:
        print(f"{args.out} has no checkpoint yet (killed before its first): starting it again from round 0", file=sys.stderr)
    ddp = wrap_ddp(model)  # None in a single process
    sampler = MergedSampler(model, torch.bfloat16 if args.device == "cuda" else torch.float32) if args.sampler == "fast" else None
    policy = lambda: sampler.model if sampler else model  # what generate samples from: the same weights either way
    static_cache = sampler is not None and args.device == "cuda"

    # the run directory: config, then metrics and samples as of the checkpoint (rows of a killed round are redone)
    metrics_path, samples_path = os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "samples.jsonl")
    if main_rank:
        if args.overwrite and os.path.isdir(args.out):
            import shutil
            for name in ("config.json", "metrics.jsonl", "samples.jsonl", "final", *CHECKPOINTS):
                path = os.path.join(args.out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
        os.makedirs(args.out, exist_ok=True)
        write_atomic(os.path.join(args.out, "config.json"),
                     json.dumps({"args": vars(args), "model_path": model_path, "processes": world}, indent=1))
        write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        write_atomic(samples_path, "".join(json.dumps(r) + "\n" for r in read_jsonl_rows(samples_path, start)))

    def log(row):
        rows.append(row)
        if main_rank:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def run_eval(round_):
        from tqdm import tqdm
        share = rank_share(heldout)  # each rank grades its share; the scores are weighted back together
        scores = {"pass@1": 0.0, "greedy": 0.0}  # a rank with no share (more ranks than questions) adds nothing
        if share:
            scores, args.gen_batch_size = halving_on_oom(
                lambda batch: evaluate(policy(), tokenizer, share, args.prompt_style, args.max_new_tokens, args.eval_samples,
                                       batch, seed=args.seed + 7919 * round_ + rank_seed, static_cache=static_cache),
                args.gen_batch_size, "in evaluation", "--gen-batch-size")
        if world > 1:
            scores = {k: global_sum(v * len(share)) / len(heldout) for k, v in scores.items()}
        if main_rank:
            tqdm.write(f"round {round_:4d} | held-out pass@1 (tau=1) {100 * scores['pass@1']:5.1f} | greedy {100 * scores['greedy']:5.1f}")
        return scores

    def sample_round(round_):
        tau = tau_sample_at(round_, args.rounds, args.tau_sample, args.tau_train, args.anneal)
        questions = rank_share(round_questions(pool, round_, args.prompts_per_round, args.seed))
        prompts = [build_prompt(tokenizer, q["question"], args.prompt_style) for q in questions]
        def draw(batch):
            torch.manual_seed(args.seed * 100_003 + round_ + rank_seed)  # each round's randomness is its own: exact resume
            return rollout(policy(), tokenizer, prompts * args.rollouts, tau, args.max_new_tokens, batch, stop_ids,
                           desc=f"round {round_} sampling", static_cache=static_cache)
        rollouts, args.gen_batch_size = halving_on_oom(draw, args.gen_batch_size, f"sampling round {round_}", "--gen-batch-size")
        return tau, rollouts

    if start == 0 and args.eval_every:
        log({"round": 0, **run_eval(0)})
    if args.offline and offline_data is None:  # the ablation: all data from the initial model, once (by rank)
        offline_data = gather_objects({r: sample_round(r) for r in progress(range(1, args.rounds + 1), "offline sampling")})
    last_saved = start

    for round_ in progress(range(start + 1, args.rounds + 1), "SePT rounds", total=args.rounds, initial=start):
        t0 = time.time()
        tau, rollouts = offline_data[rank][round_] if args.offline else sample_round(round_)
        answer_tokens, n_rollouts, n_truncated = global_sum(
            sum(len(r["answer_ids"]) for r in rollouts), len(rollouts), sum(r["truncated"] for r in rollouts))
        t1 = time.time()  # after the sums above, which wait for every rank: the round's sampling wall time
        torch.manual_seed(args.seed * 100_003 + round_ + 50_000 + rank_seed)  # dropout masks, if any
        random.Random(round_).shuffle(rollouts)  # rollouts of one question spread over the updates
        losses, n_tokens = [], 0
        for chunk in range(args.updates_per_round):
            part = rollouts[chunk::args.updates_per_round]
            try:
                (loss, n), args.micro_batch_tokens = halving_on_oom(
                    lambda budget: sept_update(model, optimizer, scheduler, part, args.tau_train, tokenizer.pad_token_id,
                                               args.loss, budget, ddp=ddp), args.micro_batch_tokens,
                    f"in round {round_}'s update", "--micro-batch-tokens", retry=world == 1)
            except FloatingPointError as e:
                die(f"round {round_}: the training loss is not finite ({e}); stopped before that update, the checkpoint "
                    f"of round {last_saved} is kept: start again with a lower --lr")
            if sampler:
                sampler.refresh()
            losses.append(loss)
            n_tokens += n
        n_tokens = global_sum(n_tokens)
        t2 = time.time()
        if main_rank:
            with open(samples_path, "a") as f:  # a few raw samples: is the template right?
                for r in rollouts[:2]:
                    f.write(json.dumps({"round": round_, "prompt": tokenizer.decode(r["prompt_ids"]),
                                        "answer": tokenizer.decode(r["answer_ids"]), "truncated": r["truncated"]}) + "\n")
        row = {"round": round_, "tau_sample": round(tau, 4), "loss": sum(losses) / len(losses),
               "lr": scheduler.get_last_lr()[0], "answer_len": answer_tokens / n_rollouts,
               "truncated": n_truncated / n_rollouts,
               "gen_tokens_per_s": answer_tokens / max(t1 - t0, 1e-9) if not args.offline else None,
               "train_tokens_per_s": n_tokens / max(t2 - t1, 1e-9), "round_s": t2 - t0}
        if args.device == "cuda":
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30  # rank 0's, under torchrun
        if args.eval_every and (round_ % args.eval_every == 0 or round_ == args.rounds):
            row.update(run_eval(round_))
        log(row)
        if main_rank and (round_ % args.save_every == 0 or round_ == args.rounds):
            save_checkpoint(args.out, model, optimizer, scheduler, round_, offline_data, rows)
            last_saved = round_

    if world > 1:
        ddp = None  # DDP's reducer holds the process group: let it go first (else gloo may abort at exit)
        finish_distributed()
    if not main_rank:
        return rows
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
