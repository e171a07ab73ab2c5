"""The command line of sept_mini.py: every flag with its help and real default, the checks that turn bad input
into one line before anything heavy runs or anything is written, --resume's saved settings, and the few
defaults the other tools share (answer length, prompt style, device)."""
import argparse
import json
import math
import os
import sys

import torch

from plumbing import UsageError
from plumbing.data import HUB_EVAL, HUB_QUESTIONS
from plumbing.distributed import ddp_rank

# The toy recipe, tuned over 5 seeds (each with its own base model): 150 rounds of 128 questions at lr 5e-5.
# At lr 1e-4 and 64 questions the run over-sharpened and lost greedy accuracy on most seeds; a smaller
# step with more questions per round keeps what the base knew (README, "Table 5 in miniature").
TOY_LR, TOY_ROUNDS, TOY_PROMPTS = 5e-5, 150, 128
# The toy samples at 0.1, real models at the paper's 0.6: on the toy, 0.6 lost 18 points of greedy accuracy on 2 of
# 5 seeds; 0.1 kept them within 3 while gaining more (docs/toy-results.md, "The recipe on the pinned path").
TOY_TAU_SAMPLE, TAU_SAMPLE = 0.1, 0.6


def default_max_new_tokens(toy):
    """The answer length cap: a toy answer is under 40 tokens; a real model's chain of thought needs room."""
    return 48 if toy else 1024


def prompt_style_for(model_name):
    """'user' (the reasoning sentence appended to the question) for instruct models, else 'system'."""
    return "user" if "instruct" in model_name.lower() else "system"


def cpu_has_bf16():
    """True on CPUs that compute bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: assume emulated
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere and later compute bf16 natively; a T4 (7.5), V100 (7.0), GTX 10xx/16xx emulate it


def cuda_capability():
    """The GPU's compute capability (major, minor): tests fake it here."""
    return torch.cuda.get_device_capability()


def native_dtype(device, capability=None):
    """The dtype rule for a real model's frozen weights, QLoRA's compute dtype and the sampler, in training and in
    evaluation: bf16 where the device computes it natively (a GPU of compute capability 8.0 or more, i.e.
    torch.cuda.is_bf16_supported(including_emulation=False); a CPU with AVX512-BF16 or AMX); fp16 on an older GPU
    (a T4 emulates bf16, 4x slower, and bitsandbytes' 4-bit tensor-core path there is fp16 only); else fp32
    (emulated bf16 is many times slower on a CPU). LoRA weights and the loss stay fp32 whatever it is."""
    if device == "cuda":
        return "bf16" if (capability or cuda_capability()) >= NATIVE_BF16_CAPABILITY else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def dtype_reason(device, dtype, capability=None):
    """A few words for the plan line: the dtype and why."""
    if device != "cuda":
        return dtype
    major, minor = capability or cuda_capability()
    if dtype == "fp16" and (major, minor) < NATIVE_BF16_CAPABILITY:
        return f"fp16: this GPU has no native bf16 (compute capability {major}.{minor}), loss scaling on"
    if dtype == "fp16":
        return "fp16 (--dtype), loss scaling on"
    return f"{dtype} (compute capability {major}.{minor})"


def eval_temps_and_ks(args):
    """eval_math.py's --temps and --k as numbers, checked against --n: ([temperatures], [k] or None)."""
    try:
        temps = [float(t) for t in args.temps.split(",")]
    except ValueError:
        raise UsageError(f"--temps must be comma-separated numbers, got '{args.temps}'") from None
    if any(t < 0 for t in temps):
        raise UsageError(f"temperatures must be >= 0 (0 = greedy), got {args.temps}")
    ks = [int(k) for k in args.k.split(",")] if args.k else None
    if args.n < 1:
        raise UsageError("--n must be at least 1")
    if ks and max(ks) > args.n:
        raise UsageError(f"pass@{max(ks)} needs n >= {max(ks)} samples per question (got --n {args.n}): raise --n "
                         "or lower --k")
    return temps, ks


def pick_device(device):
    """'auto' -> cuda when available, else cpu; an unavailable device is one line."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UsageError(f"--device {device} is not available here: use --device cpu")
    return device


def build_parser():
    p = argparse.ArgumentParser(
        prog="sept_mini.py", allow_abbrev=False,
        description="SePT: self-training on the model's own low-temperature samples (arXiv 2510.18814). "
        "Each refresh round samples answers at tau_sample, then trains on them with the logits divided by "
        "tau_train (tau_sample < tau_train sharpens the model; see docs/theory.md).",
        epilog="With --model toy the float path is pinned (AVX2 kernels in MKL, oneDNN and torch, on any x86-64 CPU "
        "and at any thread count), so every student's run prints the same numbers; SEPT_FREE_FLOAT_PATH=1 in the "
        "environment frees it. Real models are never pinned.")
    a = p.add_argument
    a("--model", default="toy", help="'toy', a local folder, or a hub id (Qwen2.5-0.5B means Qwen/Qwen2.5-0.5B) "
      "(default: toy)")
    a("--dataset", default=None, help="question pool: 'toy', 'wordsum' (2-step word problems made here, for real "
      "models), a .parquet/.jsonl/.json/.csv file (verl format ok) or a hub id (default: toy for the toy model, "
      f"{HUB_QUESTIONS} otherwise)")
    a("--eval-dataset", default=None, help="held-out questions with answers (default: the toy test set for the toy "
      f"model, {HUB_EVAL} otherwise)")
    a("--finetune", choices=["full", "lora", "qlora"], default=None,
      help="what is trained (default: full for the toy model; otherwise qlora with CUDA, lora without)")
    a("--rounds", type=int, default=None, help="refresh rounds (the paper's M): each samples fresh answers, then "
      f"trains (default: {TOY_ROUNDS} for the toy model, 100 otherwise)")
    a("--prompts-per-round", type=int, default=None, help=f"questions sampled per round (default: {TOY_PROMPTS} for "
      "the toy model, 64 otherwise)")
    a("--rollouts", type=int, default=1, help="answers sampled per question (the paper's G) (default: 1)")
    a("--updates-per-round", type=int, default=1, help="optimizer updates per round (the paper's mu); the round's "
      "answers are split among them (default: 1)")
    a("--objective", choices=["sept", "emft", "grpo"], default="sept",
      help="what the round trains on its samples: sept (SFT at tau_train), emft (minimise the token entropy, no "
      "reward) or grpo (policy gradient with the grader's reward, needs answers and --rollouts >= 2) (default: sept)")
    a("--tau-sample", type=float, default=None, help="sampling temperature tau_s; its start value when annealed "
      f"(default: {TOY_TAU_SAMPLE:g} for sept on the toy model, {TAU_SAMPLE:g} for sept otherwise; 1.0 for emft and "
      "grpo, which sample at the policy's own temperature)")
    a("--tau-train", type=float, default=1.0, help="temperature tau_t inside the training loss (default: 1.0)")
    a("--anneal", choices=["paper", "none"], default=None,
      help="paper: tau_sample rises linearly to tau_train over the first 2/3 of rounds, then stays there (coupled); "
      "none: constant (default: none for the toy model, paper otherwise)")
    a("--lr", type=float, default=None, help=f"AdamW learning rate (default: {TOY_LR:g} for the toy model, 1e-5 for "
      "LoRA/QLoRA, unverified)")
    a("--warmup-steps", type=int, default=10, help="linear learning-rate warm-up in updates, then constant as in the "
      "paper (default: 10)")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    a("--loss", choices=["fused", "naive"], default="fused",
      help="fused: chunked, never holds the [tokens x vocab] logits; naive: the plain reference (default: fused)")
    a("--max-new-tokens", type=int, default=None, help="answer length cap in tokens (default: "
      f"{default_max_new_tokens(True)} for the toy model, {default_max_new_tokens(False)} otherwise)")
    a("--gen-batch-size", type=int, default=None, help="prompts per generate call (default: planned: 64, fewer on a "
      "GPU when their KV cache would not fit a quarter of the memory budget)")
    a("--micro-batch-tokens", type=int, default=None, help="padded tokens per forward/backward; gradients accumulate "
      "over micro-batches (default: planned: 8192 on a GPU, 16384 on CPU)")
    a("--memory-budget-gb", type=float, default=None, help="memory the run may use; the plan picks micro-batches, "
      "gradient checkpointing and the sampler to fit it (default: 80%% of the free RAM on a CPU; on a GPU min(6, 80%% "
      "of the card))")
    a("--sampler", choices=["auto", "fast", "plain"], default="auto", help="fast: sample from a merged copy of the "
      "LoRA policy (static cache and compiled on CUDA); plain: from the training model itself, the reference "
      "(default: auto = fast for LoRA/QLoRA when the copy fits in memory, else plain)")
    a("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="the frozen weights' dtype for "
      "LoRA/QLoRA, and QLoRA's compute dtype; the trained LoRA weights, the loss and the optimizer stay fp32; fp16 "
      "trains with loss scaling (default: auto = bf16 on a GPU of compute capability 8.0+ and on a CPU with "
      "AVX512-BF16 or AMX, fp16 on an older GPU such as a T4, fp32 elsewhere and for full fine-tuning)")
    a("--lora-rank", type=int, default=16, help="LoRA rank r, with alpha = 2r (default: 16)")
    a("--grad-checkpointing", choices=["auto", "on", "off"], default="auto", help="recompute activations in backward "
      "to save memory (default: auto = on for real models on a GPU, off otherwise)")
    a("--prompt-style", choices=["auto", "system", "user"], default="auto",
      help="system: the reasoning prompt as system message; user: appended to the question; auto: user if the model "
      "name contains 'instruct', else system (default: auto)")
    a("--offline", action="store_true", help="ablation: sample every round's data once from the initial model, then "
      "train on it (default: off)")
    a("--eval-every", type=int, default=10, help="held-out evaluation every N rounds, and before and after; 0 turns "
      "it off (default: 10)")
    a("--warn-plateau", type=int, default=0, help="warn (one line, and 'plateau' in the metrics row) once the share of "
      "tau-1 evaluation samples that give the greedy answer, which reads no label, has not risen for N rounds; "
      "the run goes on; 0: off (default: 0)")
    a("--eval-size", type=int, default=256, help="held-out questions per evaluation (default: 256)")
    a("--eval-samples", type=int, default=2, help="samples per question for held-out pass@1 at tau=1 (default: 2)")
    a("--save-every", type=int, default=10, help="write the resumable checkpoint every N rounds, and after any round "
      "that ends a minute or more after the last checkpoint (default: 10)")
    a("--seed", type=int, default=0, help="seed for question order, sampling and initialisation; for the toy model "
      "it also picks the toy base model (each seed builds its own) (default: 0)")
    a("--device", default="auto", help="auto, cpu or cuda (default: auto, cuda when available)")
    a("--out", default="runs/sept", help="run directory (default: runs/sept)")
    a("--overwrite", action="store_true", help="start a new run in an --out that already holds one, replacing it "
      "(default: off)")
    a("--resume", action="store_true", help="continue the run in --out with its saved settings; add --rounds N to "
      "extend a finished run to N rounds (default: off)")
    a("--cache-dir", default=None, help="where the toy model is built and cached (default: $XDG_CACHE_HOME/sept-mini, "
      "else ~/.cache/sept-mini)")
    return p


def parse_args(argv=None):
    """The settings of a run, every default resolved and every value checked. Nothing writes into them later."""
    p = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    given = {a.dest for a in p._actions for o in a.option_strings if any(x == o or x.startswith(o + "=") for x in argv)}
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume contradict each other: pass one")
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
        raise UsageError(f"--resume: no run to resume in {args.out} (no config.json): start it without --resume")
    try:
        with open(path) as f:
            saved = json.load(f)["args"]
        assert isinstance(saved, dict) and isinstance(saved.get("rounds"), int)
    except Exception as e:
        raise UsageError(f"--resume: {path} is unreadable ({type(e).__name__}): the run cannot be resumed; start it "
                         "again with --overwrite") from None
    memory_knobs = {"micro_batch_tokens", "gen_batch_size"}
    changed = sorted(given - {"out", "resume", "rounds"} - memory_knobs)
    if changed:
        raise UsageError(f"--resume continues {args.out} with its saved settings; only --rounds, --micro-batch-tokens "
                         f"and --gen-batch-size can change (drop --{changed[0].replace('_', '-')}, or start a new run "
                         "in another --out)")
    defaults = vars(parser.parse_args([]))
    resumed = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults},
                                    "resume": True, "overwrite": False, "out": args.out})
    if "rounds" in given and args.rounds != saved["rounds"]:
        if saved.get("offline"):
            raise UsageError("--resume --rounds: an --offline run cannot be extended (its data was all sampled from "
                             "the initial model up front): start a new run with the --rounds you want")
        resumed.rounds = args.rounds
    for name in memory_knobs & given:
        setattr(resumed, name, getattr(args, name))
    return resumed


def check_new_out(args):
    """A new run needs an --out it can create, and never silently replaces an earlier run."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is an existing file: pass a folder")
    if os.path.isfile(os.path.join(out, "config.json")) and not args.overwrite:
        raise UsageError(f"--out {out} already holds a run: continue it with --resume, replace it with --overwrite, "
                         "or pick another --out")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--out {out}: {parent} is a file, not a folder: pass another --out")
    try:  # probe that a folder can be made here (permissions, read-only or virtual file systems), leaving nothing
        import tempfile
        os.rmdir(tempfile.mkdtemp(dir=parent))
    except OSError as e:
        raise UsageError(f"--out {out} cannot be created ({e.strerror}): pass a writable folder") from None


def validate(args):
    """Finite, positive numbers where the code needs them; the defaults that depend on the model."""
    toy = args.model == "toy"
    if args.tau_sample is None:
        args.tau_sample = (TOY_TAU_SAMPLE if toy else TAU_SAMPLE) if args.objective == "sept" else 1.0
    if args.objective == "grpo" and args.rollouts < 2:
        raise UsageError("--objective grpo needs --rollouts >= 2: the advantage compares the answers to one question "
                         "(the paper's G; try --rollouts 8)")
    args.rounds = (TOY_ROUNDS if toy else 100) if args.rounds is None else args.rounds
    args.prompts_per_round = (TOY_PROMPTS if toy else 64) if args.prompts_per_round is None else args.prompts_per_round
    for name in ("tau_sample", "tau_train", "lr", "memory_budget_gb"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0 (got {value})"
                             + ("; greedy decoding cannot be trained on" if name == "tau_sample" and value == 0
                                else ""))
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be a finite number >= 0 (got {args.weight_decay})")
    for name in ("rounds", "prompts_per_round", "rollouts", "updates_per_round", "gen_batch_size", "micro_batch_tokens",
                 "eval_size", "eval_samples", "save_every", "lora_rank", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    for name in ("eval_every", "warmup_steps", "warn_plateau"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(args, name)})")
    if args.warn_plateau and not args.eval_every:
        raise UsageError("--warn-plateau reads the agreement of held-out evaluations: pass --eval-every N as well")
    if args.updates_per_round > args.prompts_per_round * args.rollouts:
        raise UsageError("--updates-per-round cannot exceed prompts-per-round x rollouts (each update needs answers)")
    args.device = pick_device(args.device)
    args.finetune = args.finetune or ("full" if toy else "qlora" if args.device == "cuda" else "lora")
    if args.dtype in ("bf16", "fp16") and args.finetune == "full":
        raise UsageError(f"--dtype {args.dtype} needs --finetune lora or qlora (full fine-tuning keeps fp32 weights for "
                         "AdamW)")
    if args.dtype == "auto":
        args.dtype = native_dtype(args.device) if args.finetune != "full" else "fp32"
    args.dataset = args.dataset or ("toy" if toy else HUB_QUESTIONS)
    args.eval_dataset = args.eval_dataset or ("toy" if toy else HUB_EVAL)
    args.anneal = args.anneal or ("none" if toy else "paper")
    args.lr = args.lr or (TOY_LR if args.finetune == "full" else 1e-5)
    args.max_new_tokens = default_max_new_tokens(toy) if args.max_new_tokens is None else args.max_new_tokens
    if args.prompt_style == "auto":
        args.prompt_style = prompt_style_for(args.model)
    if args.objective == "sept" and args.tau_sample >= args.tau_train and not args.resume and ddp_rank() == 0:
        kind = "coupled (equal)" if args.tau_sample == args.tau_train else "inverted (tau_sample > tau_train)"
        effect = "no expected learning signal" if args.tau_sample == args.tau_train else "a flatter, worse model"
        print(f"warning: temperatures are {kind}: the theory predicts {effect}", file=sys.stderr)
