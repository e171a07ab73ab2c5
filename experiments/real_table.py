"""real_table.py: SePT on a real model on a CPU, the held-out score before and after at several temperatures, beside
the base model at its best temperature. No GPU needed.

    python experiments/real_table.py --model FOLDER                          # wordsum, e.g. a Qwen2.5 0.5B folder
    python experiments/real_table.py --model FOLDER --workers 2              # two one-thread evaluations at a time
    python experiments/real_table.py --model FOLDER --workers 2 --seeds 0,1,2  # three SePT runs, one base evaluation
    python experiments/real_table.py --model FOLDER --data math500.parquet   # questions from a file, split here
    python experiments/real_table.py --model FOLDER --fast                   # smoke test, minutes; no result

With --data wordsum (the default) the held-out questions are the task's own held-out split (disjoint from its
training questions by construction) and the probe is training-split questions outside the training pool; with a
file, the questions are split (seeded) into --heldout held-out questions and a training pool. It evaluates the base
model on the held-out questions with eval_math.py at each of --temps (--n samples per question at tau > 0), runs
sept_mini.py (LoRA; --rounds rounds of --prompts questions, sampled at --tau-sample; the probe scored every
--probe-every rounds), and evaluates the trained adapter the same way. It prints pass@1 with its standard error over
questions, the paired after-minus-before difference with its error, answer length and truncation at each
temperature, and the loss and probe per round, and writes OUT/table.md, OUT/table.json and OUT/graded.md (every
held-out answer at tau 1 with what the grader read, for checking by hand). Each evaluation is one folder per
temperature and the run resumes, so a second call (or one after a kill) only does what is missing. With --seeds,
each further seed trains and evaluates its own adapter (OUT/sept-sN, OUT/eval-sept-sN) against the same base
evaluation, and the table adds each seed's paired change with their mean and standard deviation.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project root

import eval_math
import sept_mini as sm
from plumbing import UsageError, console, data


def split(questions, heldout, seed, out):
    """Two jsonl files: held-out questions and the training pool, disjoint, from one seeded shuffle."""
    order = random.Random(seed).sample(range(len(questions)), len(questions))
    parts = {"heldout": [questions[i] for i in order[:heldout]], "train": [questions[i] for i in order[heldout:]]}
    paths = {}
    for name, part in parts.items():
        paths[name] = os.path.join(out, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps({"id": q["id"], "problem": q["question"], "answer": q["answer"]}) + "\n"
                         for q in part)
    return paths


def evaluate(model, heldout, args, out, seed):
    """eval_math.py's samples of model on the held-out questions, one folder per temperature (a finished one, with
    its results.json, is reused). eval_math seeds each temperature alike, so the parts equal one call over all."""
    jobs = []
    for tau in args.temps:
        part = os.path.join(out, f"tau{tau:g}")
        if not os.path.isfile(os.path.join(part, "results.json")):
            jobs.append([sys.executable, os.path.join(ROOT, "eval_math.py"), "--model", model, "--benchmark", heldout,
                         "--limit", str(args.heldout), "--temps", f"{tau:g}", "--n", str(args.n), "--max-new-tokens",
                         str(args.max_new_tokens), "--batch-size", "64", "--seed", str(seed), "--out", part])
    env = dict(os.environ, OMP_NUM_THREADS="1")  # parallel workers: one core each
    running = []
    for job in jobs:
        while sum(p.poll() is None for p in running) >= args.workers:
            time.sleep(5)
        os.makedirs(job[-1], exist_ok=True)
        print(f"evaluating {model} at tau {job[job.index('--temps') + 1]}", flush=True)
        if args.workers == 1:  # in this process: its progress shows here
            eval_math.main(job[2:])
            continue
        running.append(subprocess.Popen(job, env=env, stdout=open(job[-1] + ".log", "w"), stderr=subprocess.STDOUT))
    failed = [p.args[-1] for p in running if p.wait() != 0]
    failed += [os.path.join(out, f"tau{t:g}") for t in args.temps
               if not os.path.isfile(os.path.join(out, f"tau{t:g}", "results.json"))]
    if failed:
        raise UsageError(f"evaluation failed in {sorted(set(failed))[0]}: see its .log, then run this command again")
    return [json.loads(line) for t in args.temps for line in open(os.path.join(out, f"tau{t:g}", "samples.jsonl"))]


def per_question(samples, tau):
    """{question id: mean correctness in %} at temperature tau."""
    by_question = {}
    for s in samples:
        if s["tau"] == tau:
            by_question.setdefault(s["id"], []).append(100 * s["correct"])
    return {q: statistics.mean(v) for q, v in by_question.items()}


def mean_and_se(values):
    """(mean, its standard error): the questions are the sample, not the answers."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def paired_change(base, trained, tau):
    """(mean, standard error) of trained minus base at tau, question by question: the same questions before and
    after, so the question-to-question spread cancels."""
    before, after = per_question(base, tau), per_question(trained, tau)
    return mean_and_se(after[q] - before[q] for q in before)


def run_sept(args, train, out, seed):
    """The SePT run (LoRA), resumed where a killed one stopped, reused when finished."""
    if os.path.isfile(os.path.join(out, "final", "adapter_config.json")):
        return
    if os.path.isfile(os.path.join(out, "config.json")):
        return sm.main(["--out", out, "--resume"])
    probe = ["--eval-dataset", data.WORD_SUM_PROBE, "--eval-size", "48", "--eval-samples", "1", "--eval-every",
             str(args.probe_every)] if args.data == data.WORD_SUMS and args.probe_every else ["--eval-every", "0"]
    sm.main(["--model", args.model, "--dataset", train, "--finetune", "lora", "--rounds", str(args.rounds),
             "--prompts-per-round", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens), "--lr",
             str(args.lr), "--warmup-steps", "0", "--tau-sample", str(args.tau_sample), "--anneal", "none",
             "--save-every", "1", "--seed", str(seed), "--out", out, *probe])


def main(argv=None):
    with console.one_line_errors("real_table.py"):
        return make_table(argv)


def make_table(argv):
    p = argparse.ArgumentParser(prog="real_table.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model", required=True, help="a real model folder (or hub id), e.g. a Qwen2.5 0.5B (required)")
    a("--data", default=data.WORD_SUMS, help="'wordsum' (2-step word problems made here) or questions with answers "
      "in a .parquet/.jsonl file (default: wordsum)")
    a("--heldout", type=int, default=256, help="held-out questions, never trained on (default: 256)")
    a("--temps", default="0,0.3,0.6,1.0", help="evaluation temperatures, 0 = greedy (default: 0,0.3,0.6,1.0)")
    a("--n", type=int, default=1, help="samples per held-out question at each tau > 0 (default: 1)")
    a("--rounds", type=int, default=8, help="SePT rounds, one LoRA update each (default: 8)")
    a("--prompts", type=int, default=32, help="questions per round (default: 32)")
    a("--tau-sample", type=float, default=0.6, help="sampling temperature, constant (default: 0.6)")
    a("--max-new-tokens", type=int, default=192, help="answer cap, training and evaluation (default: 192; at 128 the "
      "base cut 8%% of its tau-1 answers, long step-by-step ones that end by 192)")
    a("--lr", type=float, default=3e-5, help="LoRA learning rate, no warm-up (default: 3e-5, chosen over 1e-5, 1e-4 "
      "and 3e-4 on training questions: docs/real-models.md)")
    a("--probe-every", type=int, default=8, help="score 48 probe questions (training split, never trained on) every "
      "N rounds, wordsum only; 0 = never (default: 8)")
    a("--workers", type=int, default=1, help="evaluations run at once, one thread each when > 1 (default: 1)")
    a("--seeds", default="0", help="SePT runs, one per seed (question order, sampling), each against the same base "
      "evaluation (the first seed's split and sampling); ~26 min a seed more (default: 0)")
    a("--out", default="runs/real_table", help="folder for everything (default: runs/real_table)")
    a("--fast", action="store_true", help="smoke test: 8 held-out questions, 1 round of 4, 64 tokens (default: off)")
    args = p.parse_args(argv)
    if args.fast:
        args.heldout, args.rounds, args.prompts, args.max_new_tokens, args.n, args.probe_every = 8, 1, 4, 64, 1, 1
    try:
        args.temps = sorted({float(t) for t in args.temps.split(",")})
    except ValueError:
        raise UsageError(f"--temps must be numbers separated by commas, got {args.temps!r}") from None
    try:
        args.seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))
    except ValueError:
        raise UsageError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    if min(args.temps) < 0 or 1.0 not in args.temps:
        raise UsageError("--temps must be >= 0 and include 1.0 (the temperature SePT is scored at)")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if args.data == data.WORD_SUMS:
        heldout, train = data.WORD_SUMS, data.WORD_SUMS  # the task's own disjoint splits
    else:
        questions = [q for q in data.load_questions(args.data) if q["answer"]]
        if len(questions) < args.heldout + args.prompts:
            raise UsageError(f"--data has {len(questions)} questions with answers: fewer than --heldout + --prompts")
        paths = split(questions, args.heldout, args.seeds[0], args.out)
        heldout, train = paths["heldout"], paths["train"]

    base = evaluate(args.model, heldout, args, os.path.join(args.out, "eval-base"), args.seeds[0])
    trained = {}  # seed -> the trained adapter's samples
    for seed in args.seeds:
        suffix = "" if seed == args.seeds[0] else f"-s{seed}"  # the first seed's folders keep their one-seed names
        run_dir = os.path.join(args.out, "sept" + suffix)
        run_sept(args, train, run_dir, seed)
        trained[seed] = evaluate(run_dir, heldout, args, os.path.join(args.out, "eval-sept" + suffix), seed)
    rows = [json.loads(line) for line in open(os.path.join(args.out, "sept", "metrics.jsonl"))]  # the first seed's
    return write_table(args, argv, base, trained, rows, t0)


def write_table(args, argv, base, trained_by_seed, rows, t0):
    """table.md, table.json and graded.md from the evaluations and the first seed's metrics; with several seeds,
    each seed's paired change and their mean and spread."""
    seeds = {seed: {tau: paired_change(base, samples, tau) for tau in args.temps}
             for seed, samples in trained_by_seed.items()}
    trained, table = trained_by_seed[args.seeds[0]], {}
    for tau in args.temps:
        at_tau = {name: [s for s in samples if s["tau"] == tau] for name, samples in (("base", base), ("SePT", trained))}
        table[tau] = {"base": mean_and_se(per_question(base, tau).values()),
                      "SePT": mean_and_se(per_question(trained, tau).values()), "change": seeds[args.seeds[0]][tau],
                      **{f"{name} tokens": statistics.mean(s["tokens"] for s in v) for name, v in at_tau.items()},
                      **{f"{name} cut %": 100 * statistics.mean(s["truncated"] for s in v) for name, v in at_tau.items()}}
    best = max(args.temps, key=lambda t: table[t]["base"][0])
    fmt = lambda m: f"{m[0]:.1f} ± {m[1]:.1f}"
    lines = [f"Held-out pass@1 (%, ± standard error over {args.heldout} questions; {args.n} sample(s) per question at "
             "tau > 0); change = SePT minus base on the same questions:", "",
             "| tau | base | SePT | change | tokens base / SePT | cut base / SePT |", "|---:|---:|---:|---:|---:|---:|"]
    for tau, r in table.items():
        lines.append(f"| {'greedy' if tau == 0 else f'{tau:g}'} | {fmt(r['base'])} | {fmt(r['SePT'])} | "
                     f"{r['change'][0]:+.1f} ± {r['change'][1]:.1f} | {r['base tokens']:.0f} / {r['SePT tokens']:.0f} | "
                     f"{r['base cut %']:.0f}% / {r['SePT cut %']:.0f}% |")
    within = abs(table[1.0]["change"][0]) < 2 * table[1.0]["change"][1]
    lines += ["", f"The base model at its best temperature (tau {best:g}): {fmt(table[best]['base'])}; SePT at tau 1: "
              f"{fmt(table[1.0]['SePT'])}. At tau 1 the change is {table[1.0]['change'][0]:+.1f} ± "
              f"{table[1.0]['change'][1]:.1f}" + (": within two standard errors, so within noise." if within else "."),
              "", "| round | tau_sample | loss | answer length | truncated | probe pass@1 (tau 1) | probe greedy | s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    probes = {r["round"]: r for r in rows if "greedy" in r}
    lines += [f"| {r['round']} | {r['tau_sample']} | {r['loss']:.3f} | {r['answer_len']:.0f} | "
              f"{100 * r['truncated']:.0f}% | " + (f"{100 * probes[r['round']]['pass@1']:.1f} | "
              f"{100 * probes[r['round']]['greedy']:.1f}" if r["round"] in probes else " | ") + f" | {r['round_s']:.0f} |"
              for r in rows if "loss" in r]
    if 0 in probes:
        lines.append(f"\nProbe before training: pass@1 {100 * probes[0]['pass@1']:.1f}, greedy "
                     f"{100 * probes[0]['greedy']:.1f}.")
    if len(seeds) > 1:  # one run is an anecdote: each seed's change, then their mean and spread
        rows_by_tau = []
        for tau in args.temps:
            changes = [seeds[seed][tau][0] for seed in seeds]
            rows_by_tau.append(f"| {'greedy' if tau == 0 else f'{tau:g}'} | "
                               + " | ".join(f"{seeds[seed][tau][0]:+.1f} ± {seeds[seed][tau][1]:.1f}" for seed in seeds)
                               + f" | {statistics.mean(changes):+.1f} ± {statistics.stdev(changes):.1f} |")
        lines += ["", f"Paired change (SePT minus base, ± standard error over questions) for each of {len(seeds)} seeds "
                  "(question order and sampling; the same base evaluation), then the mean ± sd over seeds "
                  f"(the tables above are seed {args.seeds[0]}'s):", "",
                  "| tau | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean ± sd |",
                  "|---:|" + "---:|" * (len(seeds) + 1), *rows_by_tau]
    command = "python experiments/real_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"Generated by `{command}` in {(time.time() - t0) / 60:.0f} min (what already existed was reused)."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({**{f"{t:g}": r for t, r in table.items()},
                   "change by seed": {str(seed): {f"{t:g}": c for t, c in by_tau.items()}
                                      for seed, by_tau in seeds.items()}}, f, indent=1)
    with open(os.path.join(args.out, "graded.md"), "w") as f:  # what the grader saw, to check it by hand
        for s in base + trained:  # the first seed's
            if s["tau"] == 1.0:
                f.write(f"- {'RIGHT' if s['correct'] else 'wrong'}: read {s['answer']!r}, gold {s['gold']!r} | "
                        f"{s['text'][-80:]!r}\n")
    print("\n" + text)
    return table


if __name__ == "__main__":
    main()
