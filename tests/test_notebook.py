"""The course's lesson notebooks: each committed copy opens with goals, prerequisites and running time, ends with
questions, shows its stored figures and no errors; each runs end to end in its small setting."""
import os
import re

import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
LESSONS = sorted(name for name in os.listdir(NOTEBOOKS) if name.endswith(".ipynb"))
FIGURES = {"1_two_temperatures.ipynb": 2, "2_sept_on_the_toy.ipynb": 2, "3_ablations_and_rivals.ipynb": 3,
           "4_real_model.ipynb": 2}


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def execute(nb, timeout=900):
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()


def test_the_series_is_four_numbered_lessons():
    assert LESSONS == ["1_two_temperatures.ipynb", "2_sept_on_the_toy.ipynb", "3_ablations_and_rivals.ipynb",
                       "4_real_model.ipynb"]


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_lesson_opens_with_goals_prerequisites_and_time_and_ends_with_questions(lesson):
    nb = nbformat.read(os.path.join(NOTEBOOKS, lesson), as_version=4)
    opening, closing = nb.cells[0].source, nb.cells[-1].source
    for needle in ("After this lesson you can", "Prerequisites", "Running time"):
        assert needle in opening, needle
    assert closing.startswith("## Questions to discuss") and "teachers/answer-key.md" in closing
    key = open(os.path.join(NOTEBOOKS, "..", "teachers", "answer-key.md")).read()
    assert f"## Lesson {lesson[0]}:" in key  # the teacher's answers to this lesson's questions


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_lesson_has_cell_ids_stored_figures_and_no_errors(lesson):
    nb = nbformat.read(os.path.join(NOTEBOOKS, lesson), as_version=4)
    nbformat.validate(nb)
    assert all(c.get("id") for c in nb.cells)
    assert sum("image/png" in o.get("data", {}) for o in outputs(nb)) >= FIGURES.get(lesson, 0)
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")  # every cell was run
    assert not library_notices(nb)
    assert "setting: fast" not in "".join(o.get("text", "") for o in outputs(nb))  # stored in the full setting


def library_notices(nb):
    """Messages from transformers or tqdm among the outputs: a reader cannot act on them (console.quiet_libraries)."""
    stderr = [o.get("text", "") for o in outputs(nb) if o.get("name") == "stderr"]
    return [t for t in stderr if "[transformers]" in t or "TqdmWarning" in t]


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS)
def test_a_lesson_runs_end_to_end_in_its_small_setting(lesson, monkeypatch):
    monkeypatch.setenv("SEPT_FAST", "1")
    nb = nbformat.read(os.path.join(NOTEBOOKS, lesson), as_version=4)
    execute(nb)
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    if any("SETTING = " in c.source for c in nb.cells):
        assert "setting: fast" in "".join(o.get("text", "") for o in outputs(nb))
    assert not library_notices(nb)


@pytest.mark.slow
def test_lesson_3_in_class_reads_the_published_table_from_a_fresh_clone(tmp_path):
    """A fresh clone has no runs/: lesson 3's full setting reads the table shipped in notebooks/data and shows the
    published numbers (the README's), never starting a run."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, "3_ablations_and_rivals.ipynb"), as_version=4)
    setup = nb.cells[next(i for i, c in enumerate(nb.cells) if c.source.startswith("SETTING = "))]
    table_cell = next(c for c in nb.cells if 'summary = json.load(open(source))' in c.source)
    assert 'SETTING = "full"' in setup.source
    setup.source = setup.source.replace('RUNS = "../runs/toy_table_fast" if FAST else "../runs/toy_table"',
                                        f'RUNS = {str(tmp_path / "no-runs")!r}')
    nb.cells = [setup, table_cell]
    execute(nb, timeout=300)
    shown = "".join(o.get("text", "") for o in outputs(nb))
    readme = open(os.path.join(NOTEBOOKS, "..", "README.md")).read()
    gain = re.search(r"\| online \(SePT\) \| [^|]+ \| \*\*\+([^*]+)\*\*", readme).group(1)  # the README's online gain
    assert "data/toy_table.json" in shown and f"**{gain}**" in shown, (gain, shown[:2000])
    assert not (tmp_path / "no-runs").exists()  # nothing was started


def test_the_48_round_table_in_the_docs_is_the_curve_lesson_4_ships():
    """docs/real-models.md's held-out table and lesson 4's figure come from one run: notebooks/data/real_curve.json."""
    import json
    curve = json.load(open(os.path.join(NOTEBOOKS, "data", "real_curve.json")))
    docs = open(os.path.join(NOTEBOOKS, "..", "docs", "real-models.md")).read()
    fmt = lambda m: f"{m[0]:.1f} ± {m[1]:.1f}"
    for rnd in ("8", "16", "32", "48"):
        row = " | ".join(f"{fmt(v['0'])} | {fmt(v['1'])} | {fmt(v['agreement'])}"
                         for v in (curve["seeds"][s]["heldout"][rnd] for s in ("0", "1")))
        assert f"| {rnd} | {row} |" in docs, rnd
    assert "real_curve.py" in curve["command"] and os.path.isfile(os.path.join(NOTEBOOKS, "..", "docs", "real_curve.png"))
