"""bench_loss.py: time and peak memory of the tau-scaled loss, naive vs fused, at Qwen2.5-0.5B's output layer.

    python experiments/bench_loss.py         # H = 896, V = 151,936, 4,096 answer tokens, fp32, CPU (+ CUDA if present)
    python experiments/bench_loss.py --tokens 1024       # smaller, quicker
    python experiments/bench_loss.py --loss entropy      # EM-FT's loss: the mean token entropy, plain vs chunked

Each variant runs forward + backward in its own process, so one variant's freed memory cannot hide
the other's peak. Rows: CPU in fp32; CUDA in fp32 (cuda_* keys) and bf16 (cuda_bf16_* keys).
CPU peak = the process's peak RSS (VmHWM, reset just before the call) minus its RSS before it;
CUDA peak = torch.cuda.max_memory_allocated minus the memory held before the call. Two settings:
'trained W' (full fine-tuning: the output weight gets a gradient) and 'frozen W' (LoRA/QLoRA). The
LAST line is one JSON object; mem_ratio and time_ratio are fused / naive on CPU with trained W.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import torch
import torch.nn.functional as F


def naive(hidden, weight, targets, tau):
    logits = hidden @ weight.T  # (N, V): the full logits, then a full log-softmax copy
    return -F.log_softmax(logits / tau, dim=-1).gather(1, targets[:, None]).mean()


def fused(hidden, weight, targets, tau):
    from sept_mini import fused_nll_sum
    return fused_nll_sum(hidden, weight, None, targets, tau) / hidden.shape[0]


def naive_entropy(hidden, weight, targets, tau):
    logp = F.log_softmax(hidden @ weight.T / tau, dim=-1)  # (N, V), and its exp: two full copies
    return -(logp.exp() * logp).sum(-1).mean()


def fused_entropy(hidden, weight, targets, tau):
    from sept_mini import fused_entropy_sum
    return fused_entropy_sum(hidden, weight, None, tau) / hidden.shape[0]


VARIANTS = {"nll": {"naive": naive, "fused": fused}, "entropy": {"naive": naive_entropy, "fused": fused_entropy}}


def proc_status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so an earlier
    transient (building the inputs) cannot be mistaken for the call's own peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(loss, variant, device, dtype, tokens, hidden_size, vocab, train_weight, repeats):
    """Runs in a child process: returns {'ms': median fwd+bwd time, 'peak_mb': extra memory of the call}."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    fn = VARIANTS[loss][variant]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    weight = torch.randn(vocab, hidden_size, device=device).mul_(0.02).to(dtype).requires_grad_(train_weight)
    hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 1):
        hidden.grad = weight.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            before = proc_status_mb("VmRSS")
        t0 = time.perf_counter()
        fn(hidden, weight, targets, 1.0).backward()
        sync()
        times.append(time.perf_counter() - t0)
        if i == 0:  # the first call's peak (later calls reuse freed memory the same way)
            peak = ((torch.cuda.max_memory_allocated() - before) / 2 ** 20 if device == "cuda"
                    else proc_status_mb("VmHWM") - before)
    times = sorted(times[1:])
    return {"ms": 1000 * times[len(times) // 2], "peak_mb": peak}


def main():
    p = argparse.ArgumentParser(prog="bench_loss.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="answer tokens in the batch")
    p.add_argument("--hidden", type=int, default=896, help="hidden size H (Qwen2.5-0.5B: 896)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size V (Qwen2.5: 151,936)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up call (median reported)")
    p.add_argument("--loss", choices=list(VARIANTS), default="nll", help="SePT's tau-scaled NLL or EM-FT's entropy")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        variant, device, dtype, train = args.child.split(":")
        trained = train == "1"
        print(json.dumps(measure(args.loss, variant, device, dtype, args.tokens, args.hidden, args.vocab, trained,
                                 args.repeats)))
        return
    # CPU in fp32; CUDA in fp32 (the keys of earlier versions) and in bf16, the dtype QLoRA/LoRA train in there
    devices = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
    results = {}
    what = {"nll": "tau-scaled NLL", "entropy": "mean token entropy (EM-FT)"}[args.loss]
    print(f"{what}, forward+backward, N={args.tokens} tokens, H={args.hidden}, V={args.vocab}")
    print(f"{'device':<7}{'dtype':<6}{'output W':<10}{'loss':<7}{'time ms':>10}{'peak MiB':>11}")
    for device, dtype in devices:
        for train in ("1", "0"):
            for variant in ("naive", "fused"):
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{variant}:{device}:{dtype}:{train}",
                       "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
                       "--repeats", str(args.repeats), "--loss", args.loss]
                here = os.path.dirname(os.path.abspath(__file__))
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=here)
                if out.returncode != 0:
                    last_line = out.stderr.strip().splitlines()[-1]
                    sys.exit(f"bench_loss.py: {variant} on {device} ({dtype}) failed: {last_line}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[(device, dtype, train, variant)] = r
                weight = "trained" if train == "1" else "frozen"
                print(f"{device:<7}{dtype:<6}{weight:<10}{variant:<7}{r['ms']:>10.1f}{r['peak_mb']:>11.0f}")
    summary = {}
    for device, dtype in devices:
        for train, tag in (("1", ""), ("0", "_frozen_w")):
            n, f = results[(device, dtype, train, "naive")], results[(device, dtype, train, "fused")]
            prefix = {"cpu": "", "cuda": "cuda_"}[device] + ("bf16_" if dtype == "bf16" else "")
            summary[f"{prefix}mem_ratio{tag}"] = round(f["peak_mb"] / n["peak_mb"], 4)
            summary[f"{prefix}time_ratio{tag}"] = round(f["ms"] / n["ms"], 4)
    summary.update(tokens=args.tokens, hidden=args.hidden, vocab=args.vocab,
                   naive_peak_mb=round(results[("cpu", "fp32", "1", "naive")]["peak_mb"]),
                   fused_peak_mb=round(results[("cpu", "fp32", "1", "fused")]["peak_mb"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
