"""The toy world: a tiny language model that can already do running sums, but not reliably.

It is the embedded default of sept_mini.py, so that SePT can be watched on a laptop CPU with no
internet. A question is a 4-step running sum, and a reference answer writes every step out:

    47+5-3+9-7:   ->   47+5=52;52-3=49;49+9=58;58-7=51;\\boxed{51}

The base model is a 3-layer, 96-wide Qwen2 (0.42M parameters, character-level tokenizer) pretrained from
scratch on NOISY reference answers: each step's result is off by 1 or 2 with probability P_ERROR and
the error is carried on. The model learns the right preference ordering (the correct digit is the
most likely one) with small margins, the regime the SePT paper targets: greedy decoding is mostly
right, sampling at temperature 1 is often wrong. With P_ERROR = 0.2 a sample at tau = 0.6 is right
far more often than wrong, so training on such samples sharpens the model. With P_ERROR = 0.3 the
low-temperature samples are wrong about half the time and SePT reinforces the errors: the regime matters.

    python toy_world.py                      # build (or reuse) the cached base model, print its folder
    python toy_world.py --seed 3             # another base model: each seed builds its own
    python toy_world.py --rebuild            # build it again from scratch
    python toy_world.py --greedy-errors 4000 # and count the training questions it answers wrong greedily

Everything is deterministic given the seed, and the same on every x86-64 CPU at any thread count: the toy's
float path is pinned (plumbing/floatpath.py; SEPT_FREE_FLOAT_PATH=1 frees it), on Intel as on AMD. Elsewhere (Apple
silicon, a GPU) another base model comes out, which is why results are also quoted over several seeds.
The build takes about two minutes on 2 CPU cores (133 s measured on an AMD EPYC) and is cached under --cache-dir (default
$XDG_CACHE_HOME/sept-mini, i.e. ~/.cache/sept-mini); a partial or corrupt cache is rebuilt.
"""
import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch

STEPS = 4            # additions/subtractions per question
P_ERROR = 0.2        # probability that a step's result in the pretraining data is off by 1 or 2
LO, HI = 18, 91      # true running sums stay here, so every number (even 4 errors of 2 off) has 2 digits
BOXED = "\\boxed{"   # one token, so the answer format costs the model nothing to learn
EOS = "<|endoftext|>"  # also the pad token, as in Qwen base models (the trap sept_mini.py guards)
TEMPLATE_VERSION = 7   # bump when the data, tokenizer or model recipe changes: invalidates the cache
# 1,000 steps left seed 3 answering 22 of 4,000 training questions wrong even greedily (a wrong step such as
# 54-5=40), which SePT then spread; at 1,200 seeds 0, 1, 3 and 4 answer none wrong, seed 2 answers 8 of 4,000
# (docs/toy-results.md, made with --greedy-errors 4000)
PRETRAIN_STEPS = 1200


# -----------------------------------------------------------------------------
# questions and reference answers

def make_question(rng):
    """A random question (start, [+-operand, ...]) whose running sums all stay in [LO, HI]."""
    while True:
        start, total, ops = rng.randint(LO, HI), None, []
        total = start
        for _ in range(STEPS):
            op = rng.choice([-1, 1]) * rng.randint(1, 9)
            if not LO <= total + op <= HI:
                op = -op  # flip the sign rather than redraw: keeps the operand distribution flat
            total += op
            ops.append(op)
        if all(LO <= s <= HI for s in _running(start, ops)):
            return start, ops


def _running(start, ops):
    sums, total = [], start
    for op in ops:
        total += op
        sums.append(total)
    return sums


def question_text(start, ops):
    return str(start) + "".join(f"{op:+d}" for op in ops)


def is_heldout(text):
    # the split is a hash of the question, so train and held-out can never share a question
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % 10 == 0


def solution(start, ops, rng=None, p_error=0.0):
    """Step-by-step answer; with p_error each step's result may be off by +-1/2 (and carried on)."""
    parts, total = [], start
    for op in ops:
        new = total + op
        if rng is not None and rng.random() < p_error:
            new += rng.choice([-2, -1, 1, 2])
        parts.append(f"{total}{op:+d}={new};")
        total = new
    return "".join(parts) + BOXED + f"{total}}}"


def questions(split, n, seed=0):
    """n distinct questions of one split ('train' or 'test'), as dicts {id, question, answer}."""
    rng, out, seen = random.Random(f"{split}-{seed}"), [], set()
    while len(out) < n:
        start, ops = make_question(rng)
        text = question_text(start, ops)
        if text in seen or is_heldout(text) != (split == "test"):
            continue
        seen.add(text)
        out.append({"id": f"toy-{split}-{len(out)}", "question": text, "answer": str(_running(start, ops)[-1])})
    return out


# -----------------------------------------------------------------------------
# tokenizer and model

def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = [EOS, "<unk>", BOXED] + list("0123456789+-=;:}")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token="<unk>")
    # The toy world's own prompt template: the question, then ':'. Carried as a chat template so
    # sept_mini.py prompts every model the same way (system messages are ignored here).
    tokenizer.chat_template = "{{ messages[-1]['content'] }}:"
    return tokenizer


def build_model(tokenizer, hidden=96, layers=3, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=4 * hidden,
                         max_position_embeddings=128, tie_word_embeddings=True, rope_theta=10000.0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    return Qwen2ForCausalLM(config)


def pretrain(model, tokenizer, steps, batch_size=64, lr=4e-3, seed=0, log=print):
    """Next-token training on noisy reference answers (loss on answer tokens only)."""
    rng = random.Random(f"pretrain-{seed}")
    torch.manual_seed(seed)
    from plumbing import floatpath
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98),
                            **floatpath.adamw_options())  # fused on the pinned path: the same bits on every vendor
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    t0 = time.time()
    for step in range(steps):
        texts, n_prompt = [], None
        for _ in range(batch_size):
            start, ops = make_question(rng)
            q = question_text(start, ops)
            if is_heldout(q):
                continue
            prompt = q + ":"
            n_prompt = len(prompt)  # every question has the same length by construction
            texts.append(prompt + solution(start, ops, rng, P_ERROR) + EOS)
        ids = torch.tensor([tokenizer.encode(t) for t in texts])  # (B, T), no padding needed
        labels = ids.clone()
        labels[:, :n_prompt] = -100
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log(f"  pretrain step {step:4d}/{steps}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    return model


def greedy_errors(path, seed=0, n=4000, batch_size=500):
    """How many of the first n training questions of this seed the model at `path` answers wrong under greedy
    decoding. SePT trains on such answers as on any other and spreads their wrong steps, so this is the regime
    check to make before training: it should be (nearly) zero."""
    import grading
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    wrong, qs = 0, questions("train", n, seed)
    for i in range(0, n, batch_size):
        batch = qs[i:i + batch_size]
        ids = torch.tensor([tokenizer.encode(q["question"] + ":") for q in batch])  # one length: no padding
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=48,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for q, row in zip(batch, out[:, ids.shape[1]:]):  # graded as every answer of the project is
            wrong += not grading.grade(tokenizer.decode(row, skip_special_tokens=True), q["answer"])
    return wrong


# -----------------------------------------------------------------------------
# the cache

def default_cache_dir():
    """$XDG_CACHE_HOME/sept-mini, falling back to ~/.cache/sept-mini (the XDG default)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sept-mini")


def cache_path(cache_dir, seed=0):
    name = f"toy-v{TEMPLATE_VERSION}-p{P_ERROR}-seed{seed}"
    return os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), name)


def is_complete(path):
    """A finished build has its marker file, written last, and loadable weights."""
    try:
        with open(os.path.join(path, "BUILD_DONE.json")) as f:
            json.load(f)
        from safetensors.torch import load_file
        load_file(os.path.join(path, "model.safetensors"))
        return True
    except Exception:
        return False


def load_or_build(cache_dir=None, seed=0, steps=PRETRAIN_STEPS, rebuild=False, log=print):
    """Path of the cached toy base model for this build seed, building it first when missing, partial
    or corrupt. cache_dir None means default_cache_dir()."""
    path = cache_path(cache_dir, seed)
    if not rebuild and is_complete(path):
        return path
    log(f"building the toy base model in {path} (once; about two minutes on 2 CPU cores)")
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = pretrain(build_model(tokenizer, seed=seed), tokenizer, steps, seed=seed, log=log)
    tmp = path + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "BUILD_DONE.json"), "w") as f:
        json.dump({"steps": steps, "p_error": P_ERROR, "seed": seed, "seconds": round(time.time() - t0, 1)}, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)  # a killed build leaves only a .tmp folder, never a half-written cache
    log(f"toy base model built in {time.time() - t0:.0f}s")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = parser.add_argument
    a("--cache-dir", default=None, help="where the toy model is cached (default: $XDG_CACHE_HOME/sept-mini, else "
      "~/.cache/sept-mini)")
    a("--seed", type=int, default=0, help="build seed: initialisation and pretraining data (default: 0)")
    a("--steps", type=int, default=PRETRAIN_STEPS, help=f"pretraining steps, batch 64 (default: {PRETRAIN_STEPS})")
    a("--rebuild", action="store_true", help="build again even if a cached model exists")
    a("--greedy-errors", type=int, default=0, metavar="N", help="then count how many of the first N training "
      "questions the base answers wrong under greedy decoding, the errors SePT would spread (default: 0, no count)")
    args = parser.parse_args()
    if args.steps < 1 or args.greedy_errors < 0:
        parser.error("--steps must be at least 1 and --greedy-errors at least 0 (0: no count)")
    if "OMP_NUM_THREADS" not in os.environ:  # as sept_mini.py: every core, unless the environment says otherwise
        torch.set_num_threads(os.cpu_count() or 1)
    from plumbing import floatpath
    print(floatpath.pin_toy_float_path(), file=sys.stderr)  # the same base on every x86 CPU, at any thread count
    path = load_or_build(args.cache_dir, args.seed, args.steps, args.rebuild)
    print(path)
    if args.greedy_errors:
        wrong = greedy_errors(path, args.seed, args.greedy_errors)
        print(f"seed {args.seed}: {wrong} of {args.greedy_errors} training questions answered wrong under greedy decoding")
