"""eval_math.py: the paper's evaluation protocol. n samples per question, unbiased pass@k, per benchmark.

    python eval_math.py --model toy --benchmark toy --temps 0,0.6,1.0 --n 8
    python eval_math.py --model runs/sept --benchmark toy --temps 1.0 --n 8          # a sept_mini.py run
    python eval_math.py --model Qwen2.5-Math-1.5B --benchmark all --temps 0.4,0.6,0.8,1.0 --n 32 --sweep
    python eval_math.py --model ./folder --benchmark math500 --data-dir path/to/benchmarks --limit 20
    python eval_math.py --regrade runs/eval/samples.jsonl                            # re-score, no generation

Benchmarks: math500 amc23 aime24 aime25 minerva olympiadbench (hub ids, or files under --data-dir), toy, toy-train
(its training questions), wordsum, or a .parquet/.jsonl path (verl format too). Prints a markdown table per temperature;
writes --out/results.json and samples.jsonl (every sample, its answer and verdict). Sampling and the prompt are
sept_mini.py's own, so both tools ask the model the same way; loading lives in plumbing/ (data, rundir).
"""
import argparse
import json
import math
import os

import torch

import grading
import sept_mini as sm
from plumbing import UsageError, cli, console, data, floatpath, rundir

PAPER_KS = (1, 8, 32)  # AVG = mean of pass@1, pass@8, pass@32


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a product of
    ratios (no huge binomials, no cancellation)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def score(samples, ks):
    """Per temperature and benchmark: pass@k for each k (means over questions, in %), AVG, and a 'mean' row."""
    table = {}
    for s in samples:
        table.setdefault(s["tau"], {}).setdefault(s["benchmark"], {}).setdefault(s["id"], []).append(s["correct"])
    avg_ks = [k for k in PAPER_KS if k in ks]
    results = {}
    for tau, benches in table.items():
        rows = results[tau] = {}
        for bench, by_question in benches.items():
            rows[bench] = {f"pass@{k}": 100 * sum(pass_at_k(len(v), sum(v), k) for v in by_question.values())
                           / len(by_question) for k in ks}
            rows[bench]["AVG"] = sum(rows[bench][f"pass@{k}"] for k in avg_ks) / len(avg_ks)
        names = list(rows)
        rows["mean"] = {col: sum(rows[b][col] for b in names) / len(names) for col in rows[names[0]]}
    return results


def best_temperature(results):
    """The temperature of best mean AVG: the paper's honest baseline for an untuned model (--sweep)."""
    return max(results, key=lambda t: results[t]["mean"]["AVG"])


def print_tables(results, ks, sweep):
    avg_of = ", ".join(f"pass@{k}" for k in PAPER_KS if k in ks)
    best = best_temperature(results) if sweep else None
    cols = [f"pass@{k}" for k in ks] + ["AVG"]
    for tau, rows in sorted(results.items()):
        print(f"\n### tau = {tau:g}{' (greedy)' * (tau == 0)}{'  <- baseline (best AVG)' * (tau == best)}\n")
        print("| benchmark | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
        for bench, row in rows.items():
            print(f"| {'**mean**' if bench == 'mean' else bench} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    note = "" if avg_of == "pass@1, pass@8, pass@32" else f" (n < 32: AVG here is the mean of {avg_of} only)"
    print(f"\nAVG = mean of pass@1, pass@8, pass@32{note}.")


def build_parser():
    p = argparse.ArgumentParser(prog="eval_math.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model", default="toy", help="'toy', a local folder, a hub id, or a sept_mini.py run dir (default: toy)")
    a("--benchmark", default="toy", help="comma-separated: toy, toy-train (to choose a temperature), math500, amc23, "
      "aime24, aime25, minerva, olympiadbench, all (the six), or .parquet/.jsonl paths (default: toy)")
    a("--data-dir", default=None, help="folder with local benchmark files, e.g. math500.parquet (default: the hub)")
    a("--temps", default="1.0", help="comma-separated sampling temperatures; 0 means greedy (default: 1.0)")
    a("--n", type=int, default=8, help="samples per question n; the paper uses 32 (default: 8)")
    a("--k", default=None, help="comma-separated k for pass@k (default: 1, 2, 4, ... up to n)")
    a("--sweep", action="store_true", help="mark the temperature of best mean AVG, the honest baseline (default: off)")
    a("--limit", type=int, default=None, help="first N questions of each benchmark (default: all; 500 for toy)")
    a("--max-new-tokens", type=int, default=None, help="answer length cap (default: "
      f"{cli.default_max_new_tokens(True)} for the toy, {cli.default_max_new_tokens(False)} otherwise)")
    a("--batch-size", type=int, default=128, help="prompts per generate call (default: 128)")
    a("--prompt-style", choices=["auto", "system", "user"], default="auto", help="as in sept_mini.py (default: auto "
      "= user if the model name contains 'instruct', else system)")
    a("--device", default="auto", help="auto, cpu or cuda (default: auto, cuda when available)")
    a("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="weights' dtype (default: auto = as "
      "sept_mini.py trains: bf16 on a GPU and on a CPU with AVX512-BF16 or AMX, else fp32; always fp32 for the toy)")
    a("--seed", type=int, default=0, help="sampling seed (default: 0)")
    a("--out", default="runs/eval", help="where results.json and samples.jsonl go (default: runs/eval)")
    a("--cache-dir", default=None, help="toy model cache (default: $XDG_CACHE_HOME/sept-mini, else ~/.cache/sept-mini)")
    a("--regrade", default=None, help="a samples.jsonl to re-score with the current grader (default: none)")
    return p


def main(argv=None):
    with console.one_line_errors("eval_math.py"):
        args = build_parser().parse_args(argv)
        return regrade(args) if args.regrade else generate_and_grade(args)


def regrade(args):
    """Re-score a samples.jsonl with the current grader and say which verdicts moved."""
    if not os.path.isfile(args.regrade):
        raise UsageError(f"--regrade: file not found: {args.regrade}")
    samples = [json.loads(line) for line in open(args.regrade)]
    before = [s.get("correct") for s in samples]
    for s in samples:
        s["answer"], s["correct"] = grading.extract_answer(s["text"]), grading.grade(s["text"], s["gold"])
    moved = [s for b, s in zip(before, samples) if bool(b) != s["correct"]]
    right = sum(s["correct"] for s in moved)
    print(f"regraded {len(samples)} samples: {len(moved)} verdicts changed ({right} now right, "
          f"{len(moved) - right} now wrong)")
    for s in moved[:20]:  # which ones: the answer the grader reads, against the gold
        print(f"  now {'right' if s['correct'] else 'wrong'}: {s['answer']!r} against {s['gold']!r}")
    key = lambda t: (t["tau"], t["benchmark"], t["id"])  # n: samples per question
    return finish(args, samples, sum(key(t) == key(samples[0]) for t in samples) if samples else 1)


def generate_and_grade(args):
    temps, ks = cli.eval_temps_and_ks(args)  # checked: one line on bad input; ks None means 1, 2, 4, ... up to n
    names = list(data.BENCHMARKS) if args.benchmark == "all" else args.benchmark.split(",")
    console.quiet_libraries()
    device = cli.pick_device(args.device)
    toy = args.model == "toy" or names == ["toy"]
    if toy:  # the toy's one float path, before torch computes: every x86 CPU draws the same samples
        floatpath.pin_toy_float_path(device)
    benches = {name: data.load_benchmark(name, args.data_dir, args.limit) for name in names}
    dtype = args.dtype if args.dtype != "auto" else "fp32" if toy else cli.native_dtype(device)
    model, tok, style = rundir.load_final_model(args.model, args.cache_dir, device, dtype)
    style = (style or cli.prompt_style_for(args.model)) if args.prompt_style == "auto" else args.prompt_style
    max_new = args.max_new_tokens or cli.default_max_new_tokens(toy)
    samples = []
    for tau, (name, questions) in ((t, b) for t in temps for b in benches.items()):
        n = 1 if tau == 0 else args.n  # greedy is deterministic: one sample stands for all n
        prompts = [sm.build_prompt(tok, q["question"], style, q.get("demo")) for q in questions for _ in range(n)]
        torch.manual_seed(args.seed)  # then the batches in order: the same draws as one rollout call over all prompts
        outs = [o for i in console.progress(range(0, len(prompts), args.batch_size), f"{name} tau={tau:g}")
                for o in sm.rollout(model, tok, prompts[i:i + args.batch_size], tau, max_new, args.batch_size)]
        for i, o in enumerate(outs):
            q, text = questions[i // n], tok.decode(o["answer_ids"], skip_special_tokens=True)
            sample = {"benchmark": name, "id": q["id"], "tau": tau, "sample": 0, "text": text,
                      "tokens": len(o["answer_ids"]), "answer": grading.extract_answer(text), "gold": q["answer"],
                      "correct": grading.grade(text, q["answer"]), "truncated": o["truncated"]}
            samples += [{**sample, "sample": (i % n) + j} for j in range(args.n if tau == 0 else 1)]
    return finish(args, samples, args.n, ks)


def finish(args, samples, n, ks=None):
    ks = ks or [2 ** i for i in range(int(math.log2(max(1, n))) + 1)]
    results = score(samples, ks)
    print_tables(results, ks, args.sweep)
    os.makedirs(args.out, exist_ok=True)
    if not args.regrade:
        with open(os.path.join(args.out, "samples.jsonl"), "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
    # last and atomically: a results.json means the evaluation finished (toy_table.py reuses it)
    rundir.write_atomic(os.path.join(args.out, "results.json"),
                        json.dumps({"args": vars(args), "results": {str(t): r for t, r in results.items()}}, indent=1))
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + ("" if args.regrade else " and samples.jsonl"))
    return results


if __name__ == "__main__":
    main()
