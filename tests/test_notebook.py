"""The walkthrough notebook: the committed copy shows its figures, and it runs end to end (small setting)."""
import os

import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "sept_walkthrough.ipynb")


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_committed_notebook_has_cell_ids_stored_figures_and_no_errors():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(c.get("id") for c in nb.cells)
    assert sum("image/png" in o.get("data", {}) for o in outputs(nb)) >= 3  # curves, margins, pass@k
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")  # every cell was run
    assert not library_notices(nb)


def library_notices(nb):
    """Messages from transformers or tqdm among the outputs: a reader cannot act on them (console.quiet_libraries)."""
    stderr = [o.get("text", "") for o in outputs(nb) if o.get("name") == "stderr"]
    return [t for t in stderr if "[transformers]" in t or "TqdmWarning" in t]


@pytest.mark.slow
def test_notebook_runs_end_to_end_in_the_fast_setting(monkeypatch):
    from nbclient import NotebookClient
    monkeypatch.setenv("SEPT_FAST", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    assert "setting: fast" in "".join(o.get("text", "") for o in outputs(nb))
    assert not library_notices(nb)


@pytest.mark.slow
def test_the_full_setting_without_stored_runs_stops_with_one_line_naming_the_command(tmp_path):
    """A fresh clone has no runs/: 'Run All' must stop at the first cell that needs them, never start 35 runs."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = nb.cells[next(i for i, c in enumerate(nb.cells) if c.source.startswith("SETTING = "))]
    needs_runs = next(c for c in nb.cells if "table = toy_table.main(" in c.source)
    assert 'SETTING = "full"' in setup.source
    setup.source = setup.source.replace('RUNS = "../runs/toy_table_fast" if FAST else "../runs/toy_table"',
                                        f'RUNS = {str(tmp_path / "no-runs")!r}')
    nb.cells = [setup, needs_runs]
    with pytest.raises(CellExecutionError) as e:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
    assert "SystemExit" in str(e.value) and "python experiments/toy_table.py" in str(e.value)
    assert not (tmp_path / "no-runs").exists()  # nothing was started
