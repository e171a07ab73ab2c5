"""toy_table.py: the paper's Table 5 in miniature, with its spread, and SePT beside its rivals. Every arm x seed
is one sept_mini.py run on the toy world, and each seed builds its own toy base model, so the spread covers the
base too. Five arms are SePT and its ablations; two are its rivals in the same loop: EM-FT (entropy minimisation,
no reward) and GRPO (RL with the grader's reward).

    python experiments/toy_table.py                   # 9 arms x 5 seeds, 150 rounds each: about 2.5 hours on 2 CPU cores
    python experiments/toy_table.py --seeds 0,1 --arms online,coupled
    python experiments/toy_table.py --arms grpo --seeds 0 --lrs 2e-5,5e-5,1e-4   # a learning-rate sweep: one row per lr
    python experiments/toy_table.py --fast            # smoke test: 1 seed, 4 rounds of 32 questions (no result)

Writes OUT/table.md (the table, the command and its wall time) and OUT/table.json (per arm: every seed's
round-0 and final held-out scores and its curve), and one run folder per arm and seed (OUT/ARM-sSEED).
A finished run or evaluation is reused and a killed run resumed, so a second call only does what is missing.
It checks the claims the README makes: that SePT gains on every seed, that coupled and inverted temperatures
do not, and that online beats offline. Then it puts every arm's final model (at tau = 1) against each seed's
base model at its best-swept temperature, at pass@1 and pass@8 (eval_math.py, 8 samples per question).
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import eval_math
import sept_mini as sm
from plumbing import UsageError, console

ARMS = {  # name -> the sept_mini.py flags that make it (the rest are the toy defaults)
    "online": [],                                           # SePT: tau_s 0.1 < tau_t 1, fresh samples each round
    "offline": ["--offline"],                               # all data sampled once from the initial model
    # the same pair at the paper's tau_s: at 0.1 the samples are the model's greedy answers, nearly the same from the
    # initial and the current model, so online and offline can only differ at a higher tau_s
    "online-0.6": ["--tau-sample", "0.6"],
    "offline-0.6": ["--offline", "--tau-sample", "0.6"],
    "coupled": ["--tau-sample", "1.0"],                     # tau_s = tau_t: zero expected gradient
    "inverted": ["--tau-sample", "1.3", "--anneal", "none"],  # tau_s > tau_t: trains the model flatter
    "paper-anneal": ["--tau-sample", "0.6", "--anneal", "paper"],  # the paper's: tau_s 0.6 -> 1 over 2/3 of the
                                                                   # rounds, then coupled
    # the rivals, each at the lr of its seed-0 sweep (experiments/toy_table.py --arms emft,grpo --seeds 0 --lrs ...):
    "emft": ["--objective", "emft", "--lr", "2e-5"],      # sample at tau 1, minimise the token entropy: no reward
    "grpo": ["--objective", "grpo", "--rollouts", "8", "--prompts-per-round", "16", "--lr", "2e-4"],  # the verifier's
}                                                   # reward; 16 questions x 8 answers = SePT's 128 samples a round
FAST = ["--rounds", "4", "--prompts-per-round", "32", "--eval-every", "2", "--eval-size", "32"]
BASE_TEMPS = "0.4,0.6,0.8,1.0"  # the base model's temperature sweep; its best (by AVG) is the honest baseline


def arm_flags(arm, lr=None):
    """The arm's flags, with its lr replaced by `lr` if given."""
    flags = ARMS[arm]
    if lr is None:
        return flags
    if "--lr" in flags:
        i = flags.index("--lr")
        flags = flags[:i] + flags[i + 2:]
    return flags + ["--lr", lr]


def run_folder(out, arm, seed, lr=None):
    return os.path.join(out, f"{arm}-s{seed}" if lr is None else f"{arm}-lr{lr}-s{seed}")


def run(arm, seed, out, extra, lr=None):
    """One run's metrics rows; reuses or resumes what is already in its folder. The run's own output goes to
    OUT/ARM-sSEED.log (OUT/ARM-lrLR-sSEED.log with another lr), so 35 runs read as 35 lines."""
    run_dir = run_folder(out, arm, seed, lr)
    argv = (["--out", run_dir, "--resume"] if os.path.isfile(os.path.join(run_dir, "config.json"))
            else [*arm_flags(arm, lr), "--seed", str(seed), "--out", run_dir, *extra])
    os.makedirs(out, exist_ok=True)
    return logged(run_dir + ".log", f"the {arm} run of seed {seed}", sm.main, argv)


def logged(log_path, what, tool_main, argv):
    """tool_main(argv) with its output appended to log_path; if it stops on bad input, its last line as ours."""
    try:
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return tool_main(argv)
    except SystemExit:
        last_line = open(log_path).read().strip().splitlines()[-1]
        raise UsageError(f"{what} stopped: {last_line}") from None


def evaluated(model, out_dir, temps, seed, limit):
    """eval_math.py's results ({tau: {"toy": {pass@1, pass@8, AVG}, "mean": ...}}) for `model` on `limit` held-out
    questions, 8 samples each, its output in OUT_DIR.log; reused when OUT_DIR/results.json exists."""
    path = os.path.join(out_dir, "results.json")
    if not os.path.isfile(path):
        logged(out_dir + ".log", f"the evaluation of {model}", eval_math.main,
               ["--model", model, "--benchmark", "toy", "--temps", temps, "--n", "8", "--k", "1,8", "--limit",
                str(limit), "--seed", str(seed), "--out", out_dir])
    return {float(t): r for t, r in json.load(open(path))["results"].items()}


def against_the_base(table, out, seeds, limit):
    """Each seed's base model at its best-swept temperature against each run's final model at tau = 1, at pass@1
    and pass@8: {"base": {seed: {tau, pass@1, pass@8}}, row: {seed: {pass@1, pass@8}}}."""
    import toy_world
    result = {"base": {}}
    for seed in console.progress(seeds, "pass@k of the base models"):
        sweep = evaluated(toy_world.load_or_build(seed=seed), os.path.join(out, f"base-s{seed}-eval"), BASE_TEMPS,
                          seed, limit)
        best = eval_math.best_temperature(sweep)
        result["base"][seed] = {"tau": best, "pass@1": sweep[best]["toy"]["pass@1"],
                                "pass@8": sweep[best]["toy"]["pass@8"]}
    for row, runs in console.progress(table.items(), "pass@k of the final models"):
        result[row] = {seed: evaluated(r["run_dir"], r["run_dir"] + "-eval", "1.0", seed, limit)[1.0]["toy"]
                       for seed, r in runs.items()}
    return result


def summarise(rows):
    evals = [r for r in rows if "pass@1" in r]
    first, last = evals[0], evals[-1]
    return {"pass@1_start": 100 * first["pass@1"], "pass@1_end": 100 * last["pass@1"],
            "greedy_start": 100 * first["greedy"], "greedy_end": 100 * last["greedy"],
            "pass@1_gain": 100 * (last["pass@1"] - first["pass@1"]),
            "greedy_change": 100 * (last["greedy"] - first["greedy"]),
            "curve": [{"round": r["round"], "pass@1": 100 * r["pass@1"], "greedy": 100 * r["greedy"]} for r in evals]}


def mean_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def checks(table):
    """The README's claims, each on every seed: (claim, holds)."""
    out = []
    by = lambda arm, key: [s[key] for s in table[arm].values()] if arm in table else None
    if "online" in table:
        out.append(("online gains >= 30 points of pass@1 on every seed", min(by("online", "pass@1_gain")) >= 30))
        out.append(("online keeps greedy accuracy within 2 points on every seed",
                    min(by("online", "greedy_change")) >= -2))
    if "coupled" in table:
        out.append(("coupled gains < 10 points on every seed", max(by("coupled", "pass@1_gain")) < 10))
    if "inverted" in table:
        out.append(("inverted ends below round 0 on every seed", max(by("inverted", "pass@1_gain")) < 0))
    for online, offline in (("online", "offline"), ("online-0.6", "offline-0.6")):
        if online in table and offline in table:
            out.append((f"{offline} gains less than {online} on average",
                        statistics.mean(by(offline, "pass@1_gain")) < statistics.mean(by(online, "pass@1_gain"))))
    return out


def markdown(table, command, wall_s, flags, versus_base, limit):
    lines = ["| arm | flags | pass@1 round 0 | pass@1 final | gain | greedy round 0 | greedy final | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arm, seeds in table.items():
        col = lambda key: mean_sd([s[key] for s in seeds.values()])
        lines.append(f"| {arm} | `{' '.join(flags[arm]) or '(defaults)'}` | {col('pass@1_start')} | "
                     f"{col('pass@1_end')} | "
                     f"**{col('pass@1_gain')}** | {col('greedy_start')} | {col('greedy_end')} | {len(seeds)} |")
    lines += ["", "Per seed, pass@1 gain (greedy change):", ""]
    for arm, seeds in table.items():
        per_seed = (f"s{s} {v['pass@1_gain']:+.1f} ({v['greedy_change']:+.1f})" for s, v in seeds.items())
        lines.append(f"- {arm}: " + ", ".join(per_seed))
    if checks(table):
        lines += ["", "Checks:", ""] + [f"- [{'x' if ok else ' '}] {claim}" for claim, ok in checks(table)]
    lines += base_lines(versus_base, limit)
    lines += ["", f"Generated by `{command}` in {wall_s / 60:.0f} min (mean ± sd over seeds; held-out pass@1 at "
              "tau = 1)."]
    return "\n".join(lines) + "\n"


def is_positive_number(text):
    try:
        return float(text) > 0
    except ValueError:
        return False


def base_lines(versus_base, limit):
    """The table against the base model at its best-swept temperature, beats counted seed by seed."""
    base = versus_base["base"]
    best = ", ".join(f"s{s} {b['tau']:g}" for s, b in base.items())
    lines = ["", f"Against the base model at its best temperature (swept over {BASE_TEMPS} by the mean of pass@1 "
             f"and pass@8; per seed: {best}); every arm's final model at tau = 1; 8 samples on each of {limit} "
             "held-out questions (eval_math.py):", "",
             "| model | pass@1 | pass@8 | beats the base at pass@1 | beats it at pass@8 |", "|---|---:|---:|---:|---:|",
             f"| base, best tau | {mean_sd([b['pass@1'] for b in base.values()])} | "
             f"{mean_sd([b['pass@8'] for b in base.values()])} | | |"]
    for row, per_seed in versus_base.items():
        if row != "base":
            wins = lambda k: f"{sum(v[k] > base[s][k] for s, v in per_seed.items())}/{len(per_seed)} seeds"
            lines.append(f"| {row} | {mean_sd([v['pass@1'] for v in per_seed.values()])} | "
                         f"{mean_sd([v['pass@8'] for v in per_seed.values()])} | {wins('pass@1')} | {wins('pass@8')} |")
    return lines


def main(argv=None):
    with console.one_line_errors("toy_table.py"):
        return make_table(argv)


def make_table(argv):
    p = argparse.ArgumentParser(prog="toy_table.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--seeds", default="0,1,2,3,4", help="comma-separated seeds; each builds its own toy base (default: 0,1,2,3,4)")
    a("--arms", default=",".join(ARMS), help=f"comma-separated arms among {', '.join(ARMS)} (default: all)")
    a("--out", default="runs/toy_table", help="folder for the runs and the table (default: runs/toy_table)")
    a("--fast", action="store_true", help="smoke test: seed 0 only, 4 rounds of 32 questions, 32 held-out questions "
      "(default: off)")
    a("--lrs", default=None, help="comma-separated learning rates: runs every arm at each (the rivals' sweep), one row "
      "per arm and lr, in OUT/ARM-lrLR-sSEED (default: each arm's own lr)")
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    if any(a not in ARMS for a in arms):
        raise UsageError(f"--arms: unknown arm in '{args.arms}': choose among {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in ("0" if args.fast else args.seeds).split(",")]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    command = "python experiments/toy_table.py " + " ".join(argv if argv is not None else sys.argv[1:])

    lrs = args.lrs.split(",") if args.lrs else [None]
    if any(lr is not None and not is_positive_number(lr) for lr in lrs):
        raise UsageError(f"--lrs must be comma-separated numbers > 0, got '{args.lrs}'")
    rows = {(arm if lr is None else f"{arm} lr={lr}"): (arm, lr) for arm in arms for lr in lrs}
    flags = {row: arm_flags(arm, lr) for row, (arm, lr) in rows.items()}

    t0 = time.time()
    table = {row: {} for row in rows}
    for row, seed in console.progress([(r, s) for r in rows for s in seeds], "toy table runs"):
        arm, lr = rows[row]
        result = table[row][seed] = summarise(run(arm, seed, args.out, FAST if args.fast else [], lr=lr))
        result["run_dir"] = run_folder(args.out, arm, seed, lr)
        print(f"{row:>13} seed {seed}: pass@1 {result['pass@1_start']:5.1f} -> {result['pass@1_end']:5.1f} "
              f"({result['pass@1_gain']:+5.1f}), greedy {result['greedy_start']:5.1f} -> {result['greedy_end']:5.1f}",
              flush=True)
    limit = 32 if args.fast else 256
    versus_base = against_the_base(table, args.out, seeds, limit)
    wall_s = time.time() - t0
    text = markdown(table, command.strip(), wall_s, flags, versus_base, limit)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"command": command.strip(), "wall_s": round(wall_s), "arms": flags,
                   "checks": checks(table), "runs": table,
                   "against_the_base": versus_base}, f, indent=1)
    print("\n" + text)
    return table


if __name__ == "__main__":
    main()
