"""eval_math.py: the paper's evaluation protocol. n samples per question, unbiased pass@k, per benchmark.

    python eval_math.py --model toy --benchmark toy --temps 0,0.6,1.0 --n 8
    python eval_math.py --model runs/sept --benchmark toy --temps 1.0 --n 8          # a sept_mini.py run
    python eval_math.py --model Qwen2.5-Math-1.5B --benchmark all --temps 0.4,0.6,0.8,1.0 --n 32 --sweep
    python eval_math.py --model ./folder --benchmark math500 --data-dir path/to/benchmarks --limit 20
    python eval_math.py --regrade runs/eval/samples.jsonl                            # re-score, no generation

Benchmarks: math500 amc23 aime24 aime25 minerva olympiadbench (hub ids, or local files with --data-dir),
toy (the toy world's held-out set), or a path to a .parquet/.jsonl file (verl format included).
Prints one markdown table per temperature (rows = benchmarks, columns = k), and writes --out/results.json
(every figure) and --out/samples.jsonl (every sample, its extracted answer and verdict).
"""
import argparse
import json
import math
import os
import sys

import grading
import sept_mini as sm

BENCHMARKS = {  # name -> (hub id, split, local file names tried under --data-dir)
    "math500": ("HuggingFaceH4/MATH-500", "test", ["math500"]),
    "amc23": ("math-ai/amc23", "test", ["amc23"]),
    "aime24": ("HuggingFaceH4/aime_2024", "train", ["aime24", "aime"]),
    "aime25": ("math-ai/aime25", "test", ["aime25"]),
    "minerva": ("math-ai/minervamath", "test", ["minerva", "minervamath"]),
    "olympiadbench": ("math-ai/olympiadbench", "test", ["olympiadbench"]),
}
PAPER_KS = (1, 8, 32)  # AVG = mean of pass@1, pass@8, pass@32


def die(message):
    print(f"eval_math.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a product of
    ratios (no huge binomials, no cancellation)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def load_benchmark(name, data_dir, limit, seed=0):
    if name == "toy":
        return sm.load_questions("toy", "test", limit or 500, seed)
    if name in BENCHMARKS:
        hub_id, split, files = BENCHMARKS[name]
        for stem in files if data_dir else []:
            for ext in (".parquet", ".jsonl"):
                if os.path.isfile(os.path.join(data_dir, stem + ext)):
                    return sm.load_questions(os.path.join(data_dir, stem + ext), limit=limit)
        return sm.load_questions(hub_id, split, limit)
    if os.path.splitext(name)[1] in (".parquet", ".jsonl", ".json"):
        return sm.load_questions(name, limit=limit)
    die(f"unknown benchmark '{name}': use one of {', '.join(['toy', *BENCHMARKS])}, 'all', or a .parquet/.jsonl path")


def resolve_model(spec, cache_dir):
    """(base model path, adapter path or None, prompt style hint) for a name, folder or sept_mini run dir."""
    config = os.path.join(spec, "config.json")
    if os.path.isdir(spec) and os.path.isfile(config) and "args" in json.load(open(config)):
        run = json.load(open(config))
        final = os.path.join(spec, "final")
        if not os.path.isdir(final):
            die(f"run {spec} has no final/ model yet: let it finish, or evaluate its base model")
        if run["args"]["finetune"] == "full":
            return final, None, run["args"]["prompt_style"]
        return run["model_path"], final, run["args"]["prompt_style"]
    return sm.resolve_model_name(spec, cache_dir), None, None


def score(samples, ks):
    """Per temperature and benchmark: pass@k for each k (means over questions, in %), plus AVG."""
    table = {}
    for s in samples:
        table.setdefault(s["tau"], {}).setdefault(s["benchmark"], {}).setdefault(s["id"], []).append(s["correct"])
    results = {}
    for tau, benches in table.items():
        results[tau] = {}
        for bench, by_question in benches.items():
            row = {}
            for k in ks:
                row[f"pass@{k}"] = 100 * sum(pass_at_k(len(v), sum(v), k) for v in by_question.values()) / len(by_question)
            avg_ks = [k for k in PAPER_KS if k in ks]
            row["AVG"] = sum(row[f"pass@{k}"] for k in avg_ks) / len(avg_ks)
            results[tau][bench] = row
        names = list(results[tau])
        results[tau]["mean"] = {col: sum(results[tau][b][col] for b in names) / len(names) for col in results[tau][names[0]]}
    return results


def print_tables(results, ks, sweep):
    avg_ks = [k for k in PAPER_KS if k in ks]
    best = max(results, key=lambda t: results[t]["mean"]["AVG"]) if sweep else None
    for tau, rows in sorted(results.items()):
        mark = "  <- baseline (best AVG)" if tau == best else ""
        print(f"\n### tau = {tau:g}{' (greedy)' if tau == 0 else ''}{mark}\n")
        cols = [f"pass@{k}" for k in ks] + ["AVG"]
        print("| benchmark | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for bench, row in rows.items():
            name = f"**{bench}**" if bench == "mean" else bench
            print(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    note = "" if avg_ks == list(PAPER_KS) else f" (n < 32: AVG here is the mean of pass@{', pass@'.join(map(str, avg_ks))} only)"
    print(f"\nAVG = mean of pass@1, pass@8, pass@32{note}.")


def main(argv=None):
    p = argparse.ArgumentParser(description="pass@k evaluation in the SePT paper's protocol: n samples per question, "
                                "unbiased pass@k, AVG = mean of pass@1, pass@8, pass@32")
    p.add_argument("--model", default="toy", help="'toy', a local folder, a hub id, or a sept_mini.py run dir (default: toy)")
    p.add_argument("--benchmark", default="toy", help="comma-separated: toy, math500, amc23, aime24, aime25, minerva, "
                   "olympiadbench, all (the six), or .parquet/.jsonl paths (default: toy)")
    p.add_argument("--data-dir", default=None, help="folder with local benchmark files (e.g. math500.parquet) (default: none, the hub)")
    p.add_argument("--temps", default="1.0", help="comma-separated sampling temperatures; 0 means greedy (default: 1.0)")
    p.add_argument("--n", type=int, default=8, help="samples per question n; the paper uses 32 (default: 8)")
    p.add_argument("--k", default=None, help="comma-separated k for pass@k (default: 1, 2, 4, ... up to n)")
    p.add_argument("--sweep", action="store_true", help="mark the temperature with the best mean AVG as the baseline, the paper's honest baseline (default: off)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark, for quick runs (default: all; 500 for toy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap in tokens (default: 48 for the toy model or benchmark, 1024 otherwise)")
    p.add_argument("--batch-size", type=int, default=128, help="prompts per generate call (default: 128)")
    p.add_argument("--prompt-style", choices=["auto", "system", "user"], default="auto", help="as in sept_mini.py: system, user, or auto = user if the model name contains 'instruct' (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--out", default="runs/eval", help="where results.json and samples.jsonl go (default: runs/eval)")
    p.add_argument("--cache-dir", default=None, help="toy model cache (default: $XDG_CACHE_HOME/sept-mini, else ~/.cache/sept-mini)")
    p.add_argument("--regrade", default=None, help="a samples.jsonl to re-score with the current grader, no model needed (default: none)")
    args = p.parse_args(argv)

    if args.regrade:
        if not os.path.isfile(args.regrade):
            die(f"--regrade: file not found: {args.regrade}")
        samples = [json.loads(line) for line in open(args.regrade)]
        before = [s.get("correct") for s in samples]
        for s in samples:
            s["answer"], s["correct"] = grading.extract_answer(s["text"]), grading.grade(s["text"], s["gold"])
        now_right = sum(not b and s["correct"] for b, s in zip(before, samples))
        now_wrong = sum(b and not s["correct"] for b, s in zip(before, samples))
        print(f"regraded {len(samples)} samples: {now_right + now_wrong} verdicts changed "
              f"({now_right} now right, {now_wrong} now wrong)")
        key = lambda t: (t["tau"], t["benchmark"], t["id"])
        n = sum(key(t) == key(samples[0]) for t in samples) if samples else 1  # samples per question
        return finish(args, samples, n)

    try:
        temps = [float(t) for t in args.temps.split(",")]
    except ValueError:
        die(f"--temps must be comma-separated numbers, got '{args.temps}'")
    if any(t < 0 for t in temps):
        die(f"temperatures must be >= 0 (0 = greedy), got {args.temps}")
    if args.n < 1:
        die("--n must be at least 1")
    ks = [int(k) for k in args.k.split(",")] if args.k else [2 ** i for i in range(int(math.log2(args.n)) + 1)]
    if max(ks) > args.n:
        die(f"pass@{max(ks)} needs n >= {max(ks)} samples per question (got --n {args.n}): raise --n or lower --k")
    names = list(BENCHMARKS) if args.benchmark == "all" else args.benchmark.split(",")

    import torch
    import transformers
    transformers.utils.logging.set_verbosity_error()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    benches = {name: load_benchmark(name, args.data_dir, args.limit) for name in names}
    base, adapter, style = resolve_model(args.model, args.cache_dir)
    model, tok = sm.load_model(base, "none", device)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    style = style if args.prompt_style == "auto" and style else args.prompt_style
    if style == "auto":
        style = "user" if "instruct" in args.model.lower() else "system"
    max_new = args.max_new_tokens or (48 if args.model == "toy" or names == ["toy"] else 1024)

    samples = []
    for tau in temps:
        for name, questions in benches.items():
            n = 1 if tau == 0 else args.n  # greedy is deterministic: one sample stands for all n
            prompts = [sm.build_prompt(tok, q["question"], style) for q in questions for _ in range(n)]
            torch.manual_seed(args.seed)
            outs = sm.rollout(model, tok, prompts, tau, max_new, args.batch_size, desc=f"{name} tau={tau:g}")
            for i, o in enumerate(outs):
                q = questions[i // n]
                text = tok.decode(o["answer_ids"], skip_special_tokens=True)
                verdict = grading.grade(text, q["answer"])
                for j in range(args.n if tau == 0 else 1):
                    samples.append({"benchmark": name, "id": q["id"], "tau": tau, "sample": (i % n) + j, "text": text,
                                    "answer": grading.extract_answer(text), "gold": q["answer"], "correct": verdict,
                                    "truncated": o["truncated"]})
    return finish(args, samples, args.n, ks)


def finish(args, samples, n, ks=None):
    ks = ks or [2 ** i for i in range(int(math.log2(max(1, n))) + 1)]
    results = score(samples, ks)
    print_tables(results, ks, args.sweep)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": {str(t): r for t, r in results.items()}}, f, indent=1)
    if not args.regrade:
        with open(os.path.join(args.out, "samples.jsonl"), "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + ("" if args.regrade else " and samples.jsonl"))
    return results


if __name__ == "__main__":
    main()
