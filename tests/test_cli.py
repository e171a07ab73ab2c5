"""The command line as a new user meets it: every bad input is one line, and no run is lost to a bad file."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import sept_mini as sm
from plumbing import cli, rundir
from conftest import comparable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(model_dir, out, *extra):
    return ["--model", model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(out),
            "--rounds", "2", "--prompts-per-round", "4", "--max-new-tokens", "10", "--eval-every", "0",
            "--lr", "1e-2", "--finetune", "full", *extra]


def OFFLINE_ENV(cwd):
    # no hub here; a host that cannot resolve makes 'offline' the same on every machine, with or without internet
    return {"HF_ENDPOINT": "https://hub.invalid", "HF_HUB_CACHE": os.path.join(str(cwd), ".no-hub-cache"),
            "PYTHONWARNINGS": "ignore"}


def run_cli(*argv, cwd=None, env=None):
    env = {**os.environ, **OFFLINE_ENV(cwd or ROOT), **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "sept_mini.py"), *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def snapshot(folder):
    """Every file under folder with the hash of its bytes: 'untouched' means equal snapshots."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = (hashlib.sha1(open(path, "rb").read()).hexdigest()
                                                  if os.path.isfile(path) else "dir")
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A finished 2-round run with both checkpoints (round 2 newest, round 1 previous)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    sm.main(tiny_args(tiny_model_dir, out, "--save-every", "1"))
    assert os.path.isfile(out / "ckpt.pt") and os.path.isfile(out / "ckpt.prev.pt")
    return out


def truncate(path, keep=100):
    with open(path, "rb") as f:
        head = f.read(keep)
    with open(path, "wb") as f:
        f.write(head)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def empty_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), path)


# (case id, how to damage the run or make a file, argv, words the one line must contain)
# {run}: a copy of a finished run; {tmp}: the case's scratch folder; {model}: a tiny model folder
BAD_INPUTS = [
    ("resume-both-checkpoints-truncated", lambda t: [truncate(t / "run" / n) for n in rundir.CHECKPOINTS],
     ["--out", "{run}", "--resume"], ["no usable checkpoint", "ckpt.pt", "--overwrite"]),
    ("resume-config-truncated", lambda t: truncate(t / "run" / "config.json", 20),
     ["--out", "{run}", "--resume"], ["config.json", "unreadable", "--overwrite"]),
    ("resume-no-run", None, ["--out", "{tmp}/nothing", "--resume"], ["no run to resume", "without --resume"]),
    ("resume-rounds-below-done", None, ["--out", "{run}", "--resume", "--rounds", "1"], ["--rounds 1", "larger --rounds"]),
    ("resume-with-another-flag", None, ["--out", "{run}", "--resume", "--lr", "1"], ["only --rounds, --micro-batch-tokens and --gen-batch-size can change", "--lr"]),
    ("resume-and-overwrite", None, ["--out", "{run}", "--resume", "--overwrite"], ["--overwrite and --resume"]),
    ("new-run-into-existing-run", None, ["--out", "{run}"], ["already holds a run", "--resume", "--overwrite"]),
    ("out-in-proc", None, ["--out", "/proc/sept-mini-x"], ["--out /proc/sept-mini-x", "cannot be created"]),
    ("out-is-a-file", lambda t: write(t / "afile", "x"), ["--out", "{tmp}/afile"], ["--out", "is an existing file"]),
    ("out-below-a-file", lambda t: write(t / "afile", "x"), ["--out", "{tmp}/afile/run"], ["is a file, not a folder"]),
    ("max-new-tokens-negative", None, ["--max-new-tokens", "-1"], ["--max-new-tokens must be at least 1"]),
    ("max-new-tokens-zero", None, ["--max-new-tokens", "0"], ["--max-new-tokens must be at least 1"]),
    ("lr-inf", None, ["--lr", "inf"], ["--lr must be a finite number > 0"]),
    ("lr-nan", None, ["--lr", "nan"], ["--lr must be a finite number > 0"]),
    ("lr-zero", None, ["--lr", "0"], ["--lr must be a finite number > 0"]),
    ("tau-train-inf", None, ["--tau-train", "inf"], ["--tau-train must be a finite number > 0"]),
    ("tau-sample-zero", None, ["--tau-sample", "0"], ["--tau-sample must be a finite number > 0", "greedy"]),
    ("tau-train-negative", None, ["--tau-train", "-1"], ["--tau-train must be a finite number > 0"]),
    ("weight-decay-nan", None, ["--weight-decay", "nan"], ["--weight-decay"]),
    ("rounds-zero", None, ["--rounds", "0"], ["--rounds must be at least 1"]),
    ("prompts-zero", None, ["--prompts-per-round", "0"], ["--prompts-per-round must be at least 1"]),
    ("rollouts-zero", None, ["--rollouts", "0"], ["--rollouts must be at least 1"]),
    ("micro-batch-tokens-zero", None, ["--micro-batch-tokens", "0"], ["--micro-batch-tokens must be at least 1"]),
    ("gen-batch-negative", None, ["--gen-batch-size", "-3"], ["--gen-batch-size must be at least 1"]),
    ("eval-every-negative", None, ["--eval-every", "-1"], ["--eval-every must be >= 0"]),
    ("device-cuda-missing", None, ["--device", "cuda"], ["--device cuda", "--device cpu"]),
    ("model-folder-missing", None, ["--model", "./no/such/folder"], ["model folder not found"]),
    ("model-folder-without-config", lambda t: os.makedirs(t / "emptymodel"), ["--model", "{tmp}/emptymodel"], ["no config.json"]),
    ("model-hub-id-offline", None, ["--model", "Qwen2.5-0.5B"], ["cannot reach", "Qwen/Qwen2.5-0.5B", "local model folder"]),
    ("dataset-hub-id-offline", None, ["--model", "{model}", "--dataset", "someorg/somedata"], ["cannot reach", "someorg/somedata"]),
    ("dataset-file-missing", None, ["--model", "{model}", "--dataset", "{tmp}/missing.parquet"], ["dataset file not found"]),
    ("dataset-empty-jsonl", lambda t: write(t / "e.jsonl", ""), ["--model", "{model}", "--dataset", "{tmp}/e.jsonl"],
     ["e.jsonl", "is empty"]),
    ("dataset-garbage-jsonl", lambda t: write(t / "g.jsonl", '{"problem": "1+1", "answer": "2"}\nnot json at all\n'),
     ["--model", "{model}", "--dataset", "{tmp}/g.jsonl"], ["g.jsonl, line 2", "not valid JSON"]),
    ("dataset-zero-byte-parquet", lambda t: write(t / "z.parquet", ""), ["--model", "{model}", "--dataset", "{tmp}/z.parquet"],
     ["z.parquet is empty"]),
    ("dataset-parquet-without-rows", lambda t: empty_parquet(t / "r.parquet"), ["--model", "{model}", "--dataset", "{tmp}/r.parquet"],
     ["r.parquet", "is empty"]),
    ("dataset-corrupt-parquet", lambda t: write(t / "c.parquet", "PAR1 this is not parquet"),
     ["--model", "{model}", "--dataset", "{tmp}/c.parquet"], ["could not read", "c.parquet"]),
    ("dataset-without-question-column", lambda t: write(t / "q.jsonl", '{"text": "hello", "answer": "1"}\n'),
     ["--model", "{model}", "--dataset", "{tmp}/q.jsonl"], ["no question column"]),
    ("eval-dataset-without-answers", lambda t: write(t / "na.jsonl", '{"problem": "1+1"}\n'),
     ["--model", "{model}", "--dataset", "toy", "--eval-dataset", "{tmp}/na.jsonl"], ["no answer column", "--eval-every 0"]),
]


# Runs each case's argv through sept_mini.main in ONE fresh process, from the case's folder, as `python sept_mini.py
# ARGV` would (same exit code, same stderr): a fresh interpreter per case costs seconds of imports, 38 times over.
CASES = r"""
import contextlib, io, json, os, sys
sys.path.insert(0, sys.argv[1])
import sept_mini
results = {}
for case, argv, cwd in json.loads(sys.argv[2]):
    os.chdir(cwd)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            sept_mini.main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a traceback a user would see
            code, err = 1, io.StringIO(f"Traceback: {type(e).__name__}: {e}")
    results[case] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_input_outcomes(finished_run, tiny_model_dir, tmp_path_factory):
    """Every case of BAD_INPUTS, prepared in its own folder and run: {case: (exit code, stderr, folder before, after)}."""
    runs, folders = [], {}
    for case, prepare, argv, _ in BAD_INPUTS:
        tmp = folders[case] = tmp_path_factory.mktemp(case)
        shutil.copytree(finished_run, tmp / "run")
        if prepare:
            prepare(tmp)
        argv = [a.format(run=tmp / "run", tmp=tmp, model=tiny_model_dir) for a in argv]
        runs.append((case, argv if "--out" in argv else argv + ["--out", str(tmp / "new-run")], str(tmp)))
    before = {case: snapshot(tmp) for case, tmp in folders.items()}
    env = {**os.environ, **OFFLINE_ENV(ROOT)}
    done = subprocess.run([sys.executable, "-c", CASES, ROOT, json.dumps(runs)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {case: (results[case][0], results[case][2], before[case], snapshot(tmp)) for case, tmp in folders.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", [c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_input_outcomes):
    needles = next(c[3] for c in BAD_INPUTS if c[0] == case)
    code, stderr, before, after = bad_input_outcomes[case]
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning: temperatures")]
    assert len(lines) == 1, stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in stderr
    assert after == before  # nothing written, the existing run byte-for-byte untouched


@pytest.mark.slow
def test_bad_input_in_a_fresh_process_is_one_line_and_exit_2(tmp_path):
    """The same, through the real command line: what a user types."""
    r = run_cli("--lr", "nan", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "--lr must be" in r.stderr
    assert not os.listdir(tmp_path)


def test_help_prints_the_real_default_of_every_flag():
    text = " ".join(cli.build_parser().format_help().split())  # argparse wraps lines
    assert "default: None" not in text
    flags = [a for a in cli.build_parser()._actions if a.option_strings and a.dest != "help"]
    assert all("default:" in (a.help or "") for a in flags), [a.dest for a in flags if "default:" not in (a.help or "")]
    for symbol in ("the paper's M", "the paper's G", "the paper's mu", "48 for the toy model, 1024 otherwise"):
        assert symbol in text


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one_identically(tiny_model_dir, tmp_path, capsys):
    args = ["--rounds", "4", "--save-every", "1", "--eval-every", "2", "--eval-size", "4"]
    full = sm.main(tiny_args(tiny_model_dir, tmp_path / "a", *args))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    truncate(tmp_path / "b" / "ckpt.pt")  # the newest (round 4) is lost; round 3's is intact
    capsys.readouterr()
    resumed = sm.main(["--out", str(tmp_path / "b"), "--resume"])
    assert "resuming from ckpt.prev.pt (round 3)" in capsys.readouterr().err
    strip = comparable
    assert strip(resumed) == strip(full)
    assert strip(json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")) == strip(full)


def test_a_garbage_metrics_line_is_rebuilt_from_the_checkpoint(finished_run, tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path / "run")
    good = open(tmp_path / "run" / "metrics.jsonl").read()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write("{garbage\n")
    rows = sm.main(["--out", str(tmp_path / "run"), "--resume", "--rounds", "3"])
    assert [r["round"] for r in rows] == [1, 2, 3]
    lines = open(tmp_path / "run" / "metrics.jsonl").read().splitlines()
    assert good.splitlines() == lines[:2] and json.loads(lines[2])["round"] == 3


@pytest.mark.slow
def test_resume_with_more_rounds_extends_a_finished_run_exactly(tiny_model_dir, tmp_path):
    straight = sm.main(tiny_args(tiny_model_dir, tmp_path / "a", "--rounds", "4", "--anneal", "none"))
    sm.main(tiny_args(tiny_model_dir, tmp_path / "b", "--rounds", "2", "--anneal", "none"))
    extended = sm.main(["--out", str(tmp_path / "b"), "--resume", "--rounds", "4"])
    strip = comparable
    assert strip(extended) == strip(straight)  # constant tau_sample: extending equals having asked for 4
    assert json.load(open(tmp_path / "b" / "config.json"))["args"]["rounds"] == 4


def test_resume_of_a_finished_run_without_more_rounds_says_so(finished_run, tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path / "run")
    before = snapshot(tmp_path)
    sm.main(["--out", str(tmp_path / "run"), "--resume"])
    assert "already finished its 2 rounds" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_run(finished_run, tiny_model_dir, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    rows = sm.main(tiny_args(tiny_model_dir, tmp_path / "run", "--rounds", "1", "--overwrite"))
    assert [r["round"] for r in rows] == [1]
    assert not os.path.exists(tmp_path / "run" / "ckpt.prev.pt")  # the old run's files are gone


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = sm.answer_nll

    def poisoned(model, *a, **k):  # round 3's loss is nan
        nll, n = real(model, *a, **k)
        return (nll * float("nan"), n) if poisoned.calls >= 2 else (nll, n)
    poisoned.calls = 0
    real_update = sm.sept_update

    def counting_update(*a, **k):
        try:
            return real_update(*a, **k)
        finally:
            poisoned.calls += 1
    monkeypatch.setattr(sm, "answer_nll", poisoned)
    monkeypatch.setattr(sm, "sept_update", counting_update)
    with pytest.raises(SystemExit) as e:
        sm.main(tiny_args(tiny_model_dir, out, "--rounds", "4", "--save-every", "1"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1
    assert "round 3" in err[-1] and "not finite" in err[-1] and "round 2" in err[-1] and "--lr" in err[-1]
    import torch
    assert torch.load(out / "ckpt.pt", weights_only=False)["round"] == 2
    assert all(torch.isfinite(v).all() for v in torch.load(out / "ckpt.pt", weights_only=False)["model"].values())


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["lora", "qlora"])
def test_the_first_screen_has_no_library_warnings(finetune, tiny_model_dir, tmp_path):
    """What a user sees is ours: the plan, progress, a note they can act on; no FutureWarning from a library."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sept_mini.py"), *tiny_args(tiny_model_dir, tmp_path / "run"),
                        "--finetune", finetune, "--grad-checkpointing", "on", "--lr", "1e-3"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert (len(notes) == 1 and "slow CPU kernels" in notes[0]) if finetune == "qlora" else not notes


def test_bitsandbytes_import_messages_stay_off_the_screen(capsys):
    import logging
    from plumbing import console
    console.quiet_libraries()
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward (simulated)")
    assert "gemm_4bit" not in capsys.readouterr().err


def test_progress_in_jupyter_without_ipywidgets_is_plain_lines(monkeypatch, capsys):
    """A notebook stores every output: text bars would store every update, so plain lines come instead."""
    from plumbing import console
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets raises ImportError
    assert list(console.progress(range(3), "SePT rounds")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert err == "SePT rounds: 3/3 (0s)\n"
