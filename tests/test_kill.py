"""A run killed with SIGKILL at a random moment, during sampling, training or a checkpoint write, and then
resumed with --resume, ends with exactly the metrics of a run that was never interrupted."""
import json
import os
import random
import signal
import sys

import pytest

from conftest import comparable, side_by_side

pytestmark = pytest.mark.slow  # each test kills and resumes a run in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 6

# A child process that runs sept_mini.py and SIGKILLs itself at the n-th call of one function: no Python
# cleanup, no finally blocks, no flushed buffers; the same death as an out-of-memory kill or a pulled plug.
CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import sept_mini as sm
from plumbing import rundir

where, n = sys.argv[2], int(sys.argv[3])
calls = {"n": 0}
def die_at_nth(fn, before=True):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n and before:
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*a, **k)
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped
if where == "sampling":                  # inside generate, round n
    sm.rollout = die_at_nth(sm.rollout)
elif where == "training":                # after the n-th micro-batch's forward, before its update is done
    sm.answer_nll = die_at_nth(sm.answer_nll, before=False)
elif where == "checkpoint-file-written": # the new checkpoint is on disk as ckpt.pt.tmp, not yet renamed
    real_save = rundir.torch.save
    rundir.torch.save = die_at_nth(real_save, before=False)
elif where == "between-renames":         # ckpt.pt already moved to ckpt.prev.pt, the new one not yet in place
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if dst.endswith("ckpt.prev.pt"):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
    rundir.os.replace = replace
sm.main(sys.argv[4:])
"""


def run_args(model_dir, out):
    return ["--model", model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(out), "--rounds", str(ROUNDS),
            "--prompts-per-round", "6", "--max-new-tokens", "12", "--eval-every", "2", "--eval-size", "6",
            "--save-every", "1", "--lr", "1e-2", "--finetune", "full", "--micro-batch-tokens", "40"]


def command(*argv, kill=None):
    """(argv, env): one thread each, so that two of these share the two cores without contending."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    script = [sys.executable, "-c", CHILD, ROOT, *kill] if kill else [sys.executable, os.path.join(ROOT, "sept_mini.py")]
    return [*script, *argv], env


rng = random.Random(2026)  # random moments, the same on every machine
MOMENTS = [("sampling", rng.randint(2, ROUNDS)), ("training", rng.randint(3, 3 * ROUNDS)),
           ("checkpoint-file-written", rng.randint(1, ROUNDS - 1)), ("between-renames", rng.randint(1, ROUNDS - 2))]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run and one killed run per moment, two at a time (each its own process, one thread: the
    same bits under any load), then every killed run resumed: {key: (out, killed, finished before resume, resumed)},
    killed and resumed as (returncode, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("kill")
    folder = lambda key: tmp / ("uninterrupted" if key == "uninterrupted" else f"{key[0]}-{key[1]}")
    first = {"uninterrupted": command(*run_args(tiny_model_dir, folder("uninterrupted")))}
    first.update({key: command(*run_args(tiny_model_dir, folder(key)), kill=[key[0], str(key[1])]) for key in MOMENTS})
    first = side_by_side(first)
    assert first["uninterrupted"][0] == 0, first["uninterrupted"][2][-2000:]
    died = [key for key in MOMENTS if first[key][0] == -signal.SIGKILL]
    finished = {key: os.path.exists(folder(key) / "final") for key in died}
    resumed = side_by_side({key: command("--out", str(folder(key)), "--resume") for key in died})
    return {key: (folder(key), first[key], finished.get(key), resumed.get(key)) for key in first}


def metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


@pytest.mark.parametrize("where, nth", MOMENTS, ids=[f"{w}-{n}" for w, n in MOMENTS])
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(where, nth, runs):
    out, killed, finished_before_resume, resumed = runs[where, nth]
    assert killed[0] == -signal.SIGKILL, killed[2][-2000:]
    assert not finished_before_resume  # it really died mid-run
    assert resumed is not None and resumed[0] == 0, resumed[2][-2000:]
    final = metrics(out)
    assert [r["round"] for r in final] == list(range(ROUNDS + 1))
    assert comparable(final) == comparable(metrics(runs["uninterrupted"][0]))
