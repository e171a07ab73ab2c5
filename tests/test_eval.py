"""eval_math.py: the unbiased pass@k estimator, the report, --regrade, and bad input."""
import itertools
import json
import os
from fractions import Fraction

import pytest

import eval_math
import sept_mini as sm
from plumbing import models


def exact_pass_at_k(n, c, k):
    """Probability that k of the n samples, drawn without replacement, include a correct one: by enumeration."""
    samples = [1] * c + [0] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in d) for d in draws), len(draws))


def test_pass_at_k_equals_the_exact_probability_for_all_small_n():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert abs(eval_math.pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) < 1e-12, (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    assert eval_math.pass_at_k(1000, 0, 500) == 0.0
    assert eval_math.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 < eval_math.pass_at_k(10000, 3, 32) < 1.0
    with pytest.raises(ValueError):
        eval_math.pass_at_k(4, 1, 8)


def test_eval_on_toy_prints_table_and_writes_samples_then_regrades(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    results = eval_math.main(["--model", tiny_model_dir, "--benchmark", "toy", "--limit", "6", "--temps", "0,1.0",
                              "--n", "4", "--max-new-tokens", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| benchmark | pass@1 | pass@2 | pass@4 | AVG |" in text and "tau = 0 (greedy)" in text
    assert set(results) == {0.0, 1.0}
    samples = [json.loads(l) for l in open(out / "samples.jsonl")]
    assert len(samples) == 6 * 4 * 2  # greedy is generated once and counted for all n
    assert {"benchmark", "id", "tau", "text", "answer", "gold", "correct"} <= set(samples[0])
    # a grader change is applied by --regrade without generating again: mark every sample right
    for s in samples:
        s["text"] = "\\boxed{" + s["gold"] + "}"
    with open(out / "samples.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    capsys.readouterr()
    regraded = eval_math.main(["--regrade", str(out / "samples.jsonl"), "--out", str(out)])
    changed = sum(not s["correct"] for s in samples)  # every sample the tiny model got wrong is now right
    assert f"{changed} verdicts changed ({changed} now right, 0 now wrong)" in capsys.readouterr().out
    assert regraded[1.0]["toy"]["pass@1"] == 100.0 and regraded[0.0]["toy"]["pass@4"] == 100.0


def test_eval_uses_the_training_dtype_rule_and_reports_progress_in_a_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A real model is evaluated in bf16 where the CPU computes it natively, as sept_mini.py trains it; the toy never
    (its float path is pinned). With stderr in a file, not a terminal, progress still comes as plain lines."""
    from plumbing import cli, rundir
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"problem": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(6)))
    loaded = []
    real_load = rundir.load_final_model
    monkeypatch.setattr(rundir, "load_final_model", lambda *a: loaded.append(a[3]) or real_load(*a))
    argv = ["--model", tiny_model_dir, "--benchmark", str(questions), "--temps", "1.0", "--n", "2",
            "--max-new-tokens", "8", "--batch-size", "4"]
    for native in (True, False):
        monkeypatch.setattr(cli, "cpu_has_bf16", lambda: native)
        eval_math.main(argv + ["--out", str(tmp_path / str(native))])
    assert loaded == ["bf16", "fp32"]
    assert "q.jsonl tau=1: 3/3" in capsys.readouterr().err  # 12 prompts in batches of 4: a plain progress line
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: True)
    eval_math.main(["--model", tiny_model_dir, "--benchmark", "toy", "--limit", "2", "--temps", "1.0", "--n", "1",
                    "--max-new-tokens", "8", "--out", str(tmp_path / "toy")])
    assert loaded[-1] == "fp32"  # the toy benchmark is on the pinned float path


def test_eval_in_batches_draws_what_one_rollout_call_draws(tiny_model_dir, tmp_path):
    import torch
    import sept_mini as sm
    from plumbing import models
    eval_math.main(["--model", tiny_model_dir, "--benchmark", "toy", "--limit", "6", "--temps", "1.0", "--n", "2",
                    "--max-new-tokens", "8", "--batch-size", "4", "--out", str(tmp_path)])
    model, tok = models.load_model(tiny_model_dir, "none", "cpu")
    questions = eval_math.data.load_benchmark("toy", None, 6)
    prompts = [sm.build_prompt(tok, q["question"], "system") for q in questions for _ in range(2)]
    torch.manual_seed(0)
    expected = [tok.decode(o["answer_ids"], skip_special_tokens=True) for o in sm.rollout(model, tok, prompts, 1.0, 8, 4)]
    assert [json.loads(line)["text"] for line in open(tmp_path / "samples.jsonl")] == expected


def test_avg_uses_the_papers_ks():
    samples = [{"tau": 1.0, "benchmark": "b", "id": str(q), "correct": i < q} for q in range(4) for i in range(32)]
    row = eval_math.score(samples, [1, 2, 4, 8, 16, 32])[1.0]["b"]
    assert row["AVG"] == pytest.approx((row["pass@1"] + row["pass@8"] + row["pass@32"]) / 3)


@pytest.mark.parametrize("argv, needle", [
    (["--benchmark", "nosuch"], "unknown benchmark"),
    (["--benchmark", "missing.parquet"], "dataset file not found"),
    (["--n", "4", "--k", "8"], "needs n >= 8"),
    (["--temps", "-0.5"], "must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        eval_math.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.slow
def test_real_table_splits_disjointly_and_reports_pass_at_1_with_its_standard_error(tiny_model_dir, tmp_path,
                                                                                      capsys):
    import real_table
    import toy_world
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "problem": q["question"], "answer": q["answer"]}) + "\n"
                            for i, q in enumerate(toy_world.questions("train", 40))))
    table = real_table.main(["--model", tiny_model_dir, "--data", str(data), "--fast", "--seeds", "0,1",
                             "--out", str(tmp_path / "t")])
    heldout, train = ({json.loads(line)["id"] for line in open(tmp_path / "t" / f"{name}.jsonl")}
                      for name in ("heldout", "train"))
    assert len(heldout) == 8 and len(train) == 32 and not heldout & train  # never trained on a held-out question
    assert set(table) == {0.0, 0.3, 0.6, 1.0}  # greedy and three temperatures, before and after
    for row in table.values():
        assert all(0 <= row[m][0] <= 100 and row[m][1] >= 0 for m in ("base", "SePT"))
        assert row["change"][0] == pytest.approx(row["SePT"][0] - row["base"][0])  # paired over the same questions
    assert all(len(open(tmp_path / "t" / "eval-base" / f"tau{t}" / "samples.jsonl").read().splitlines()) == 8
               for t in ("0", "0.3", "0.6", "1"))
    out = capsys.readouterr().out
    assert "best temperature" in out and "| 1 | 0.6 |" in out  # the base's best, and the round's row
    assert len(open(tmp_path / "t" / "graded.md").read().splitlines()) == 16  # tau = 1 answers, base and SePT
    by_seed = json.load(open(tmp_path / "t" / "table.json"))["change by seed"]  # a second seed: its own run and
    assert set(by_seed) == {"0", "1"} and (tmp_path / "t" / "sept-s1" / "final").is_dir()  # change, one base
    assert by_seed["0"]["1"][0] == pytest.approx(table[1.0]["change"][0])
    assert "mean ± sd" in out and out.count(f"evaluating {tiny_model_dir} at tau") == 4  # the base: once
    assert out.index("| 1 | 0.6 |") < out.index("mean ± sd")  # the seeds' table after the round table, not inside it


def test_agreement_is_the_share_of_tau_1_samples_that_give_the_greedy_answer_and_reads_no_label(tiny_model_dir,
                                                                                                  monkeypatch):
    model, tok = models.load_model(tiny_model_dir, "full", "cpu")
    texts = {0.0: ["\\boxed{3}", "\\boxed{5}", "no answer", "\\boxed{1/2}"],  # greedy, then the tau-1 samples
             1.0: ["so \\boxed{3}", "\\boxed{6}", "no answer", "\\boxed{0.5}"]}
    monkeypatch.setattr(sm, "rollout", lambda model, tok, prompts, tau, *a, **k: [{"text": t} for t in texts[tau]])
    questions = [{"question": f"{i}+1:", "answer": gold} for i, gold in enumerate(["3", "6", "7", "0.5"])]
    scores = sm.evaluate(model, tok, questions, "user", 8, 1, 4, seed=0)
    assert scores == {"pass@1": 0.75, "greedy": 0.5, "agreement": 0.5}  # 3 = 3 and 1/2 = 0.5; no answer never agrees
    for q in questions:
        q["answer"] = "999"  # other labels: the scores move, the agreement does not
    assert sm.evaluate(model, tok, questions, "user", 8, 1, 4, seed=0) == {"pass@1": 0.0, "greedy": 0.0,
                                                                             "agreement": 0.5}


def test_real_curve_reports_held_out_rounds_with_errors_and_refuses_a_run_past_an_unscored_round(tmp_path):
    """real_curve.py's table from run folders: the base as round 0, held-out rounds with standard errors, every
    round's label-free signals, the probe's peak; and a run trained past a held-out round it never scored (so that
    round's adapter is gone) is refused with what to do, not silently skipped."""
    import argparse
    import real_curve
    out = tmp_path / "c"

    def samples(folder, correct_by_tau):
        for tau, correct in correct_by_tau.items():
            (out / folder / f"tau{tau:g}").mkdir(parents=True)
            (out / folder / f"tau{tau:g}" / "results.json").write_text("{}")
            (out / folder / f"tau{tau:g}" / "samples.jsonl").write_text("".join(  # tau 1 gives greedy's 5 twice
                json.dumps({"id": str(i), "tau": tau, "correct": c, "answer": "5", "text": f"\\boxed{{{5 + (i > 1)}}}"})
                + "\n" for i, c in enumerate(correct)))
    samples("eval-base", {0.0: [1, 0, 0, 0], 1.0: [0, 0, 0, 0]})
    samples("eval-s0-r2", {0.0: [1, 1, 0, 0], 1.0: [1, 1, 1, 0]})
    rows = [{"round": 0, "greedy": 0.5, "pass@1": 0.25, "agreement": 0.25}]
    rows += [{"round": r, "loss": 0.1 / r, "answer_len": 30, "boxed": 1.0, "entropy": 0.2 / r, "round_s": 90,
              **({"greedy": g, "pass@1": p, "agreement": 0.5} if g is not None else {})}
             for r, g, p in ((1, None, None), (2, 0.75, 0.5), (3, None, None), (4, 0.5, 0.75))]
    (out / "sept-s0").mkdir()
    (out / "sept-s0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = argparse.Namespace(seeds=[0], heldout_at=[2, 4], temps=[0.0, 1.0], heldout=4, out=str(out), rounds_to=4)
    curve = real_curve.write_curve(args, ["--model", "M"], real_curve.load_samples(out / "eval-base", args.temps), 0)
    assert curve["base"]["0"] == pytest.approx((25.0, 25.0)) and curve["base"]["1"] == (0.0, 0.0)
    assert curve["seeds"]["0"]["heldout"]["2"]["1"] == pytest.approx((75.0, 25.0))  # mean, standard error
    text = (out / "curve.md").read_text()
    assert "| 0 | 25.0 ± 25.0 | 0.0 ± 0.0 | 50.0 ± 28.9 |" in text and "| 2 | 50.0 ± 28.9 | 75.0 ± 25.0 |" in text
    assert "| 3 | 0.033 | 30 | 1.00 | 0.067 |  |  |  | 90 |" in text  # a round without a probe
    assert "peaks at round 2 greedy (75.0) and round 4 at tau 1 (75.0)" in text
    assert "held-out score peaks at round 2 greedy (50.0) and round 2 at tau 1 (75.0)" in text
    assert curve["seeds"]["0"]["turns"]["held-out agreement"] is None  # 2 rounds: nothing can have turned yet
    assert (out / "curve.png").stat().st_size > 10_000
    (out / "eval-s0-r2" / "tau0" / "results.json").unlink()  # round 2 unscored, and the run is at round 4
    with pytest.raises(real_curve.UsageError, match="past round 2 without its held-out evaluation"):
        real_curve.run_seed(args, 0)


def test_real_curve_goes_on_in_parts_scoring_each_held_out_round_once(tmp_path, monkeypatch):
    import argparse
    import real_curve
    calls = []

    def train_to(args, run_dir, seed, rounds):
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"round": rounds, "loss": 0.1}) + "\n")
        calls.append(f"train to {rounds}")

    def evaluate(model, heldout, args, folder, seed):
        for tau in args.temps:
            os.makedirs(os.path.join(folder, f"tau{tau:g}"))
            open(os.path.join(folder, f"tau{tau:g}", "results.json"), "w").close()
        calls.append(f"score {os.path.basename(folder)}")
    monkeypatch.setattr(real_curve, "train_to", train_to)
    monkeypatch.setattr(real_curve.real_table, "evaluate", evaluate)
    args = argparse.Namespace(heldout_at=[8, 16], temps=[0.0, 1.0], out=str(tmp_path), rounds_to=12)
    real_curve.run_seed(args, 3)  # a first part that ends between held-out rounds
    assert calls == ["train to 8", "score eval-s3-r8", "train to 12"]
    args.rounds_to = 16
    real_curve.run_seed(args, 3)
    real_curve.run_seed(args, 3)  # run again: nothing left to do
    assert calls[3:] == ["train to 16", "score eval-s3-r16"]


def test_a_stream_turns_where_it_stops_moving_its_way_and_only_past_points_decide():
    from plumbing.rundir import turn
    probe = [(0, 50), (4, 60), (8, 66), (12, 64), (16, 60), (20, 58)]  # rises, peaks at round 8, falls
    assert turn(probe, +1, 8) == (8, 16)  # known two probes (8 rounds) after the peak
    assert turn(probe[:5], +1, 8) == (8, 16) and turn(probe[:4], +1, 8) is None  # causal: the same call at round 16
    assert turn([(r, -v) for r, v in probe], -1, 8) == (8, 16)  # a falling stream, mirrored
    entropy = [(r, 0.2 * 0.5 ** r if r < 4 else 0.0125 - 0.0001 * r) for r in range(1, 30)]  # halves, then creeps
    assert turn(entropy, -1, 8) is None  # without a margin, every creeping step is a new best
    assert turn(entropy, -1, 8, margin=0.05) == (4, 12)  # with one, the creep is a plateau
    assert turn([(r, 1 - 0.9 ** r) for r in range(40)], +1, 8, margin=0.05)[0] > 20  # a steady rise is not a turn


AGREEMENT = {0: 0.37, 4: 0.60, 8: 0.80, 12: 0.81, 16: 0.79, 20: 0.90, 24: 0.78}  # rises to round 8, then creeps


def test_warn_plateau_marks_the_one_row_where_agreement_stops_rising(tmp_path, capsys):
    import argparse
    from plumbing import rundir
    for patience, marked in ((8, [16]), (0, []), (100, [])):  # the first turn, once; off; never known
        out = tmp_path / str(patience)
        out.mkdir()
        run = rundir.RunDir(argparse.Namespace(out=str(out), warn_plateau=patience), "model", 1)
        for r in range(25):  # a synthetic metrics stream: agreement at each evaluation, every 4 rounds
            run.log({"round": r, "loss": 0.01, **({"agreement": AGREEMENT[r]} if r in AGREEMENT else {})})
        rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
        assert [r["round"] for r in rows if "plateau" in r] == marked
        assert all(r["plateau"] == 8 for r in rows if "plateau" in r)  # the best round, 0.81 adds under 5% of 0.43
        assert capsys.readouterr().err.count("has not risen for") == len(marked)
    rising = [{"round": r, "agreement": 0.3 + 0.02 * r} for r in range(0, 48, 4)]
    assert all(rundir.plateau_warning(rising[:i], 8, say=False) == {} for i in range(1, len(rising) + 1))


def test_warn_plateau_reaches_the_metrics_rows_of_a_run_and_survives_a_resume(tiny_model_dir, tmp_path, monkeypatch,
                                                                               capsys):
    def scripted(sampler, tokenizer, heldout, round_, args):
        return {"pass@1": 0.0, "greedy": 0.0, "agreement": AGREEMENT[round_]}
    monkeypatch.setattr(sm, "evaluate_heldout", scripted)
    args = ["--model", tiny_model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(tmp_path),
            "--prompts-per-round", "2", "--max-new-tokens", "4", "--eval-every", "4", "--warn-plateau", "8"]
    sm.main([*args, "--rounds", "16"])
    sm.main(["--out", str(tmp_path), "--resume", "--rounds", "24"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["round"], r["plateau"]) for r in rows if "plateau" in r] == [(16, 8)]  # once, not again after resume
    assert capsys.readouterr().err.count("has not risen for 8 rounds since round 8") == 1
    with pytest.raises(SystemExit):
        sm.main([*args, "--eval-every", "0", "--overwrite"])
    assert "--warn-plateau reads the agreement of held-out evaluations" in capsys.readouterr().err
