"""real_curve.py: SePT on a real model for many rounds, on a CPU: where the score peaks, whether it falls, and which
number a run has without labels turns with it.

    python experiments/real_curve.py --model FOLDER                   # 48 rounds, seeds 0 and 1 side by side
    python experiments/real_curve.py --model FOLDER --seeds 0         # one seed, two threads
    python experiments/real_curve.py --model FOLDER --rounds-to 16    # only the first part: resume later
    python experiments/real_curve.py --model FOLDER --report          # the curve so far, while the seeds run
    python experiments/real_curve.py --model FOLDER --fast            # smoke test, minutes; no result

The real-table recipe (wordsum, 32 questions a round, LoRA lr 3e-5, tau_sample 0.6 constant, answers up to 192
tokens) run for --rounds rounds. sept_mini.py scores the 48 probe questions (training split, never trained on) at
greedy and tau 1 every --probe-every rounds, and logs with every round what needs no label: the loss on the model's
own samples, answer length, the share of answers with a closed box, the model's token entropy along its samples,
and at each probe the share of tau-1 samples that give the greedy answer. At each --heldout-at round the run stops,
eval_math.py scores the adapter on the 256 held-out questions (greedy, and one sample at tau 1) and the run resumes;
the base model is scored the same way once. Everything resumes: run the same command again after a kill, or with a
larger --rounds-to, and only what is missing is done. With several seeds and --workers > 1 each seed runs in its own
one-thread process (log: OUT/seed-S.log). Writes OUT/curve.md, OUT/curve.json and OUT/curve.png.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_table
import sept_mini as sm
from plumbing import UsageError, console, data
from plumbing.rundir import PLATEAU_MARGIN as MARGIN, turn

# What a run has without answers, and the way each moves while SePT sharpens the model (+1 up, -1 down); answer
# length is logged and plotted but has no expected way to move.
SIGNALS = {"loss": -1, "entropy": -1, "boxed": +1, "agreement": +1}
NAMES = {"greedy": "probe greedy (label)", "pass@1": "probe tau 1 (label)", "loss": "loss on own samples",
         "entropy": "token entropy", "boxed": "boxed answers", "agreement": "tau-1 / greedy agreement",
         "held-out greedy": "held-out greedy (label)", "held-out agreement": "held-out tau-1 / greedy agreement"}
PATIENCE = 8  # rounds without a new best before a stream counts as turned (rundir.turn): two probes


def done_rounds(run_dir):
    """The last trained round in run_dir's metrics (0 when it has none)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    return max([json.loads(line)["round"] for line in open(path) if '"loss"' in line] or [0])


def train_to(args, run_dir, seed, rounds):
    """The seed's run, trained (or resumed, or extended) to `rounds` rounds."""
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        return sm.main(["--out", run_dir, "--resume", "--rounds", str(rounds)])
    sm.main(["--model", args.model, "--dataset", data.WORD_SUMS, "--finetune", "lora", "--rounds", str(rounds),
             "--prompts-per-round", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens), "--lr",
             str(args.lr), "--warmup-steps", "0", "--tau-sample", str(args.tau_sample), "--anneal", "none",
             "--eval-dataset", data.WORD_SUM_PROBE, "--eval-size", "48", "--eval-samples", "1", "--eval-every",
             str(args.probe_every), "--save-every", "1", "--seed", str(seed), "--out", run_dir,
             *(["--memory-budget-gb", str(args.memory_budget_gb)] if args.memory_budget_gb else [])])


def run_seed(args, seed):
    """One seed's chain: train to each held-out round in turn, score the adapter there, go on."""
    run_dir = os.path.join(args.out, f"sept-s{seed}")
    for at in [r for r in args.heldout_at if r <= args.rounds_to]:
        folder = os.path.join(args.out, f"eval-s{seed}-r{at}")
        if all(os.path.isfile(os.path.join(folder, f"tau{t:g}", "results.json")) for t in args.temps):
            continue
        if done_rounds(run_dir) > at:
            raise UsageError(f"{run_dir} is past round {at} without its held-out evaluation {folder}: delete "
                             f"{run_dir} to start that seed again")
        t0 = time.time()
        train_to(args, run_dir, seed, at)
        print(f"seed {seed}: trained to round {at} in {(time.time() - t0) / 60:.1f} min", flush=True)
        t0 = time.time()
        real_table.evaluate(run_dir, data.WORD_SUMS, args, folder, seed)
        print(f"seed {seed}: held-out evaluation at round {at} in {(time.time() - t0) / 60:.1f} min", flush=True)
    if done_rounds(run_dir) < args.rounds_to:  # a part that ends between held-out rounds
        train_to(args, run_dir, seed, args.rounds_to)


def scores(samples, tau):
    """(mean, standard error) of held-out pass@1 in % at tau, over questions."""
    return real_table.mean_and_se(real_table.per_question(samples, tau).values())


def agreement(samples):
    """(mean, standard error) in % of held-out questions whose tau-1 sample gives the greedy answer: no label read."""
    greedy = {s["id"]: s["answer"] for s in samples if s["tau"] == 0}
    sampled = [s for s in samples if s["tau"] == 1]
    return real_table.mean_and_se(100 * g for g in sm.graded(sampled, [greedy[s["id"]] for s in sampled]))


def load_samples(folder, temps):
    return [json.loads(line) for t in temps for line in open(os.path.join(folder, f"tau{t:g}", "samples.jsonl"))]


def pct(row, key):
    return f"{100 * row[key]:.1f}" if row.get(key) is not None else ""


def peak(points):
    """(round, value) of the highest point; ties: the earliest."""
    return max(points, key=lambda p: (p[1], -p[0]))


def main(argv=None):
    with console.one_line_errors("real_curve.py"):
        return make_curve(argv)


def make_curve(argv):
    p = argparse.ArgumentParser(prog="real_curve.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model", required=True, help="a real model folder (or hub id), e.g. a Qwen2.5 0.5B (required)")
    a("--rounds", type=int, default=48, help="SePT rounds in all (default: 48)")
    a("--rounds-to", type=int, default=None, help="stop after this many rounds this time; the same command with a "
      "larger value (or none) goes on (default: --rounds)")
    a("--heldout-at", default="8,16,32,48", help="rounds at which the 256 held-out questions are scored, besides "
      "the base (default: 8,16,32,48)")
    a("--probe-every", type=int, default=4, help="score the 48 probe questions every N rounds (default: 4)")
    a("--prompts", type=int, default=32, help="questions per round (default: 32)")
    a("--lr", type=float, default=3e-5, help="LoRA learning rate, no warm-up (default: 3e-5, real_table's)")
    a("--tau-sample", type=float, default=0.6, help="sampling temperature, constant (default: 0.6)")
    a("--max-new-tokens", type=int, default=192, help="answer cap, training and evaluation (default: 192)")
    a("--seeds", default="0,1", help="one run per seed, each against the same base evaluation (default: 0,1)")
    a("--workers", type=int, default=2, help="processes at once, one thread each when > 1: the base's two "
      "evaluations, then one per seed (default: 2)")
    a("--memory-budget-gb", type=float, default=None, help="each training run's memory budget (default: "
      "sept_mini's plan alone; 10 each when seeds run side by side)")
    a("--report", action="store_true", help="train nothing: write the curve from what the runs have done so far "
      "(default: off)")
    a("--child", action="store_true", help=argparse.SUPPRESS)  # one seed's process: the parent writes the curve
    a("--out", default="runs/real_curve", help="folder for everything (default: runs/real_curve)")
    a("--fast", action="store_true", help="smoke test: 8 held-out questions, 4 rounds of 4, 64 tokens (default: off)")
    args = p.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    try:
        args.heldout_at = sorted({int(r) for r in args.heldout_at.split(",")})
        args.seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))
    except ValueError:
        raise UsageError("--heldout-at and --seeds must be integers separated by commas") from None
    args.temps, args.n, args.heldout = [0.0, 1.0], 1, 256  # real_table.evaluate's settings: greedy and one tau-1 sample
    if args.fast:
        args.rounds, args.heldout_at, args.probe_every, args.prompts, args.max_new_tokens, args.heldout = \
            4, [2, 4], 2, 4, 64, 8
    args.rounds_to = min(args.rounds_to or args.rounds, args.rounds)
    if args.rounds < 1 or args.probe_every < 1 or any(r < 1 or r > args.rounds for r in args.heldout_at):
        raise UsageError("--rounds and --probe-every must be >= 1, and every --heldout-at round in 1..--rounds")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if not args.child:  # the parent scores the base once, before the seeds
        base = real_table.evaluate(args.model, data.WORD_SUMS, args, os.path.join(args.out, "eval-base"),
                                   args.seeds[0])
    if args.report:
        return write_curve(args, argv, base, t0)
    if len(args.seeds) > 1 and args.workers > 1:  # one child per seed, one thread each
        children = []
        for seed in args.seeds:
            child = [sys.executable, os.path.abspath(__file__), *argv, "--seeds", str(seed), "--workers", "1",
                     "--child", "--memory-budget-gb", str(args.memory_budget_gb or 10)]
            log = open(os.path.join(args.out, f"seed-{seed}.log"), "a")
            children.append(subprocess.Popen(child, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=log,
                                             stderr=subprocess.STDOUT))
            print(f"seed {seed}: running, log in {log.name}", flush=True)
        failed = [seed for seed, c in zip(args.seeds, children) if c.wait() != 0]
        if failed:
            raise UsageError(f"seed {failed[0]} failed: see {args.out}/seed-{failed[0]}.log, then run this again")
    else:
        for seed in args.seeds:
            run_seed(args, seed)
    return None if args.child else write_curve(args, argv, base, t0)


def write_curve(args, argv, base, t0):
    """curve.md, curve.json and curve.png from what the runs have done so far."""
    curve = {"base": {**{f"{t:g}": scores(base, t) for t in args.temps}, "agreement": agreement(base)}, "seeds": {}}
    args.seeds = [s for s in args.seeds if os.path.isfile(os.path.join(args.out, f"sept-s{s}", "metrics.jsonl"))]
    for seed in args.seeds:
        rows = [json.loads(line) for line in open(os.path.join(args.out, f"sept-s{seed}", "metrics.jsonl"))]
        heldout = {0: curve["base"]}
        for at in args.heldout_at:
            folder = os.path.join(args.out, f"eval-s{seed}-r{at}")
            if os.path.isfile(os.path.join(folder, "tau1", "results.json")):
                samples = load_samples(folder, args.temps)
                heldout[at] = {**{f"{t:g}": scores(samples, t) for t in args.temps}, "agreement": agreement(samples)}
        curve["seeds"][str(seed)] = {"rows": rows, "heldout": {str(r): v for r, v in heldout.items()}}
    best_tau = max(("0", "1"), key=lambda t: curve["base"][t][0])
    fmt = lambda m: f"{m[0]:.1f} ± {m[1]:.1f}"
    lines = [f"Held-out pass@1 (%, ± standard error over {args.heldout} questions; one sample per question at tau 1). "
             f"Round 0 is the base model (best of greedy and tau 1: {'greedy' if best_tau == '0' else 'tau 1'}, "
             f"{fmt(curve['base'][best_tau])}); agreement: the share of questions whose tau-1 sample gives the greedy "
             "answer, which reads no label:", "",
             "| round | " + " | ".join(f"seed {s} greedy | seed {s} tau 1 | seed {s} agreement" for s in args.seeds)
             + " |", "|---:|" + "---:|---:|---:|" * len(args.seeds)]
    for at in [0, *args.heldout_at]:
        cells = [curve["seeds"][str(s)]["heldout"].get(str(at)) for s in args.seeds]
        if any(cells):
            lines.append(f"| {at} | " + " | ".join(f"{fmt(c['0'])} | {fmt(c['1'])} | {fmt(c['agreement'])}" if c
                                                   else " |  | " for c in cells) + " |")
    for seed in args.seeds:
        rows = curve["seeds"][str(seed)]["rows"]
        probes = [r for r in rows if "greedy" in r]
        lines += ["", f"Seed {seed}, every round (probe: 48 training-split questions never trained on; agreement: "
                  "the share of tau-1 probe samples that give the greedy answer, which reads no label):", "",
                  "| round | loss | answer tokens | boxed | entropy (nats/token) | probe greedy | probe tau 1 | "
                  "agreement | s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        by_round = {}
        for r in rows:
            by_round.setdefault(r["round"], {}).update(r)
        for rnd, r in sorted(by_round.items()):
            cell = lambda key, f: f.format(r[key]) if key in r else ""
            lines.append(f"| {rnd} | {cell('loss', '{:.3f}')} | {cell('answer_len', '{:.0f}')} | "
                         f"{cell('boxed', '{:.2f}')} | {cell('entropy', '{:.3f}')} | "
                         f"{pct(r, 'greedy')} | {pct(r, 'pass@1')} | {pct(r, 'agreement')} | "
                         f"{cell('round_s', '{:.0f}')} |")
        if probes:
            g, t = peak([(r["round"], r["greedy"]) for r in probes]), peak([(r["round"], r["pass@1"]) for r in probes])
            lines.append(f"\nSeed {seed}'s probe peaks at round {g[0]} greedy ({100 * g[1]:.1f}) and round {t[0]} at "
                         f"tau 1 ({100 * t[1]:.1f}); last probe: round {probes[-1]['round']}.")
        held = sorted((int(r), v) for r, v in curve["seeds"][str(seed)]["heldout"].items())  # 256 questions, sparse
        g, t = peak([(r, v["0"][0]) for r, v in held]), peak([(r, v["1"][0]) for r, v in held])
        lines.append(f"Seed {seed}'s held-out score peaks at round {g[0]} greedy ({g[1]:.1f}) and round {t[0]} at tau 1 "
                     f"({t[1]:.1f}); last held-out round: {held[-1][0]}.")
        turns = {key: turn([(r["round"], r[key]) for r in probes], +1, PATIENCE) for key in ("greedy", "pass@1")}
        turns.update({key: turn([(r["round"], r[key]) for r in rows if r.get(key) is not None], way, PATIENCE,
                                   MARGIN)
                      for key, way in SIGNALS.items()})
        turns.update({f"held-out {key}": turn([(r, v[tau][0]) for r, v in held], +1, PATIENCE)
                      for key, tau in (("greedy", "0"), ("agreement", "agreement"))})
        curve["seeds"][str(seed)]["turns"] = turns
        lines += ["", f"Seed {seed}: where each stream stopped moving its way (best round, and the round by which "
                  f"{PATIENCE} rounds without a new best showed it; a label-free signal's new best must add "
                  f"{100 * MARGIN:g}% to its move so far):", "",
                  "| stream | best round | known at round |", "|---|---:|---:|"]
        lines += [f"| {NAMES[key]} | " + (f"{t[0]} | {t[1]} |" if t else "still moving | |")
                  for key, t in turns.items()]
    command = "python experiments/real_curve.py " + " ".join(argv)
    lines += ["", f"Generated by `{command}` in {(time.time() - t0) / 60:.0f} min (what already existed was reused)."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "curve.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "curve.json"), "w") as f:
        json.dump({**curve, "command": command}, f, indent=1)
    plot(curve, os.path.join(args.out, "curve.png"))
    print("\n" + text)
    return curve


def plot(curve, path=None):
    """Held-out (points with standard errors) and probe (lines) against round, greedy and tau 1, each seed; the
    base's best as a dashed line; right, the label-free signals scaled to their first value; a dash-dot line where
    agreement turned (the round --warn-plateau 8 warns at). Saved to path, or shown (in a notebook) without one."""
    import matplotlib
    if path:
        matplotlib.use("Agg")  # no display needed to write a file
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    best = max(v[0] for v in curve["base"].values())
    for (seed, run), color in zip(curve["seeds"].items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        probes = [r for r in run["rows"] if "greedy" in r]
        for ax, key, tau in ((axes[0], "greedy", "0"), (axes[1], "pass@1", "1")):
            ax.plot([r["round"] for r in probes], [100 * r[key] for r in probes], color=color, alpha=0.5,
                    label=f"seed {seed}: probe (48)")
            held = sorted((int(r), v[tau]) for r, v in run["heldout"].items())
            ax.errorbar([r for r, _ in held], [m for _, (m, _) in held], yerr=[se for _, (_, se) in held], color=color,
                        fmt="o-", capsize=3, label=f"seed {seed}: held-out (256)")
        warned = run["turns"]["agreement"]  # where --warn-plateau 8 would have warned this seed (None: never)
        for ax in axes if warned else ():
            ax.axvline(warned[1], color=color, ls="-.", lw=1, label=f"seed {seed}: warn-plateau at {warned[1]}")
        for key, style in (("entropy", "-"), ("loss", "--"), ("agreement", ":")):
            pts = [(r["round"], r[key]) for r in run["rows"] if key in r and r[key] is not None]
            if pts and pts[0][1]:
                axes[2].plot([r for r, _ in pts], [v / pts[0][1] for _, v in pts], style, color=color,
                             label=f"seed {seed}: {key}")
    for ax, title in ((axes[0], "greedy"), (axes[1], "pass@1 at tau 1")):
        ax.axhline(best, color="gray", ls="--", label="base at its best temperature")
        ax.set(title=title, xlabel="round", ylabel="%")
    axes[0].legend(fontsize=7)
    axes[2].set(title="label-free signals / their first value", xlabel="round")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    if not path:
        return plt.show()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
