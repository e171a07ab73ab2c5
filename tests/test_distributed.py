"""sept_mini.py under torchrun on CPU (gloo, 2 processes): the update equals a single process's on the union of
the rollouts, the ranks share the single-process question order, one rank writes the run, and a killed
distributed run resumes to the uninterrupted metrics."""
import json
import os
import subprocess
import sys

import pytest
import torch

import sept_mini as sm
from plumbing import distributed, models
from conftest import comparable

pytestmark = pytest.mark.slow  # torchrun with 2 processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 4


def torchrun(script, *argv, nproc=2):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if nproc > 1:  # one thread per process, as torchrun sets it (said here to keep its warning out of the output)
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def fixed_rollouts(n=9, seed=0):
    """Rollouts of very different lengths: the ranks' shares differ in answer tokens and in micro-batch count."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda k: torch.randint(1, 19, (k,), generator=g).tolist()  # the toy vocabulary: 19 tokens
    return [{"prompt_ids": rand(4 + i % 3), "answer_ids": rand(30 if i % 2 == 0 else 3 + i % 4) + [0]} for i in range(n)]


def updated_weights(model_dir, finetune, rollouts, ddp=False, updates=3):
    """Trainable weights after `updates` updates of sept_update on these rollouts, set up as main() does."""
    torch.manual_seed(0)
    model, tokenizer = models.load_model(model_dir, finetune, "cpu", lora_rank=4, lora_dropout=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    wrapped = distributed.wrap_ddp(model, sm.sept_loss) if ddp else None
    for u in range(updates):
        part = rollouts[u::updates]
        sm.sept_update(model, optimizer, scheduler, distributed.rank_share(part) if ddp else part, 1.0,
                       tokenizer.pad_token_id, "fused", micro_batch_tokens=60, ddp=wrapped)
    return models.trainable_state(model)


# Each rank trains on its share of the same rollouts, through DDP; every rank saves what it ends with.
UPDATE_WORKER = r"""
import sys, torch, torch.distributed as dist
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from plumbing import distributed
from test_distributed import fixed_rollouts, updated_weights
dist.init_process_group("gloo")
out = {f: updated_weights(sys.argv[2], f, fixed_rollouts(27), ddp=True) for f in ("full", "lora", "qlora")}
torch.save(out, f"{sys.argv[3]}/rank{dist.get_rank()}.pt")
distributed.compute_cleanup()
"""


def test_two_process_update_equals_one_process_update_on_the_union(tiny_model_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(UPDATE_WORKER)
    done = torchrun(str(script), ROOT, tiny_model_dir, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for finetune in ("full", "lora", "qlora"):
        single = updated_weights(tiny_model_dir, finetune, fixed_rollouts(27))
        initial = models.trainable_state(models.load_model(tiny_model_dir, finetune, "cpu", lora_rank=4, lora_dropout=0.0)[0])
        assert any((single[k] - initial[k]).abs().max() > 1e-3 for k in single)  # the updates did move the weights
        for state in ranks:
            assert set(state[finetune]) == set(single)
            worst = max((state[finetune][k] - single[k]).abs().max().item() for k in single)
            assert worst < 1e-5, (finetune, worst)


def test_rank_shares_are_disjoint_and_make_the_single_process_order():
    items = list(range(11))
    shares = [distributed.rank_share(items, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == items and [len(s) for s in shares] == [4, 4, 3]
    assert [shares[i % 3][i // 3] for i in range(11)] == items  # interleaved back, they are the global order


# sept_mini.py with two hooks: every sampling call's prompts are logged per rank (outside the run directory),
# and one rank can SIGKILL itself at its n-th training forward (no cleanup: a pulled plug).
CHILD = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import sept_mini as sm

log_dir, kill_rank, kill_at = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rank = int(os.environ.get("RANK", 0))
real_rollout, real_nll, calls = sm.rollout, sm.answer_nll, {"n": 0}
def rollout(model, tokenizer, prompts, *a, desc=None, **k):
    if desc and desc.endswith("sampling"):
        with open(os.path.join(log_dir, f"prompts-rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"round": int(desc.split()[1]), "prompts": prompts}) + "\n")
    return real_rollout(model, tokenizer, prompts, *a, desc=desc, **k)
def answer_nll(*a, **k):
    out = real_nll(*a, **k)
    calls["n"] += 1
    if rank == kill_rank and calls["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
sm.rollout, sm.answer_nll = rollout, answer_nll
sm.main(sys.argv[5:])
"""


def run_args(model_dir, out):
    return ["--model", model_dir, "--dataset", "toy", "--eval-dataset", "toy", "--out", str(out), "--rounds", str(ROUNDS),
            "--prompts-per-round", "7", "--max-new-tokens", "12", "--eval-every", "2", "--eval-size", "5",
            "--save-every", "1", "--lr", "1e-2", "--finetune", "full", "--micro-batch-tokens", "40"]


def run_child(tmp, model_dir, out, kill_rank=-1, kill_at=0, extra=(), nproc=2):
    script, logs = tmp / "child.py", tmp / f"logs-{out.name}"
    script.write_text(CHILD)
    logs.mkdir(exist_ok=True)
    return torchrun(str(script), ROOT, str(logs), str(kill_rank), str(kill_at), *run_args(model_dir, out), *extra, nproc=nproc), logs


def logged(logs, rank):
    return [json.loads(line) for line in open(logs / f"prompts-rank{rank}.jsonl")]


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    done, logs = run_child(tmp, tiny_model_dir, tmp / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run", logs, done


@pytest.fixture(scope="module")
def single_process_run(tiny_model_dir, tmp_path_factory):
    """The same run in this process, without torchrun: (its metrics rows, the prompts of each round)."""
    prompts, real_rollout = [], sm.rollout
    def rollout(model, tokenizer, batch, *a, desc=None, **k):
        if desc and desc.endswith("sampling"):
            prompts.append(batch)
        return real_rollout(model, tokenizer, batch, *a, desc=desc, **k)
    sm.rollout = rollout
    try:
        rows = sm.main(run_args(tiny_model_dir, tmp_path_factory.mktemp("single") / "run"))
    finally:
        sm.rollout = real_rollout
    return rows, prompts


def test_two_processes_sample_the_single_process_questions_in_order(two_process_run, single_process_run):
    out, logs, _ = two_process_run
    single = single_process_run[1]
    ranks = [logged(logs, 0), logged(logs, 1)]
    assert [r["round"] for r in ranks[0]] == [r["round"] for r in ranks[1]] == list(range(1, ROUNDS + 1))
    for round_, prompts in enumerate(single):
        share0, share1 = ranks[0][round_]["prompts"], ranks[1][round_]["prompts"]
        assert (len(share0), len(share1)) == (4, 3) and not set(share0) & set(share1)
        interleaved = [(share0, share1)[i % 2][i // 2] for i in range(len(prompts))]
        assert interleaved == prompts


def test_only_rank_zero_writes_the_run_directory(two_process_run):
    out, _, done = two_process_run
    assert sorted(os.listdir(out)) == sorted(["ckpt.pt", "ckpt.prev.pt", "config.json", "final", "metrics.jsonl", "samples.jsonl"])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))  # each round once: not appended by both ranks
    assert all("pass@1" in r for r in rows if r["round"] % 2 == 0)
    assert json.load(open(out / "config.json"))["processes"] == 2
    for line in ("plan:", "round    2 | held-out pass@1", "greedy accuracy", "saved "):  # said once, not by each rank
        assert done.stdout.count(line) == 1, line
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert [s["round"] for s in samples] == [r for r in range(1, ROUNDS + 1) for _ in range(2)]


def test_killed_two_process_run_resumes_to_the_uninterrupted_metrics(two_process_run, tiny_model_dir, tmp_path):
    uninterrupted = [json.loads(line) for line in open(two_process_run[0] / "metrics.jsonl")]
    out = tmp_path / "run"
    killed, _ = run_child(tmp_path, tiny_model_dir, out, kill_rank=1, kill_at=5)  # rank 1, in round 3's training
    assert killed.returncode != 0 and not os.path.exists(out / "final"), killed.stderr[-2000:]
    saved = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert 0 < saved[-1]["round"] < ROUNDS  # it died mid-run, after some checkpoints
    resumed = torchrun(os.path.join(ROOT, "sept_mini.py"), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout
    final = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert comparable(final) == comparable(uninterrupted)


def test_torchrun_with_one_process_is_the_plain_run(single_process_run, tiny_model_dir, tmp_path):
    done = torchrun(os.path.join(ROOT, "sept_mini.py"), *run_args(tiny_model_dir, tmp_path / "run"), nproc=1)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert comparable(rows) == comparable(single_process_run[0])


def test_too_few_questions_per_process_is_one_line_before_joining_the_group(tiny_model_dir, tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "sept_mini.py"), *run_args(tiny_model_dir, tmp_path / "run"),
                           "--prompts-per-round", "3", "--updates-per-round", "2"],
                          capture_output=True, text=True, timeout=120, env=env)  # no torchrun: joining would wait forever
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
    assert "--updates-per-round 2" in done.stderr and "2 processes" in done.stderr and not os.path.exists(tmp_path / "run")
