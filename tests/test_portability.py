"""What a student's machine may lack: `resource` is Unix-only (native Windows has none), so peak memory is measured
where the OS gives it and a run never needs it."""
import json
import os
import sys

import pytest

from conftest import side_by_side
from test_floatpath import scripts_command

# From here `import resource` fails, as on Windows. psutil (which transformers imports) is loaded first: its Linux
# backend needs resource where its Windows backend would not.
WITHOUT_RESOURCE = "import sys, psutil; sys.modules['resource'] = None\n"


def test_peak_memory_is_not_measured_without_resource(monkeypatch):
    from plumbing import memory
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setattr(sys, "platform", "linux")  # neither resource nor Windows' own call: "not measured"
    assert memory.peak_rss_gb() is None
    monkeypatch.delitem(sys.modules, "resource")
    assert memory.peak_rss_gb() > 0  # with resource, this Linux/macOS process's peak


@pytest.mark.slow
def test_the_toy_runs_a_round_without_resource(tmp_path):
    """`python sept_mini.py --rounds 1 --eval-every 0` (on a short toy base), with `import resource` failing."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    argv = scripts_command(["toy_world.py", "--steps", "3", "--cache-dir", str(cache)],
                           ["sept_mini.py", "--cache-dir", str(cache), "--out", str(out), "--rounds", "1",
                            "--eval-every", "0", "--prompts-per-round", "8"])
    argv[2] = WITHOUT_RESOURCE + argv[2]
    code, stdout, stderr = side_by_side({"run": (argv, dict(os.environ))})["run"]
    assert code == 0, stderr[-2000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["round"] for r in rows] == [1] and rows[0]["peak_rss_gb"] is None  # "not measured", and the run goes on
    assert (out / "final").is_dir()
