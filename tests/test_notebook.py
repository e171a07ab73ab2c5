"""The walkthrough notebook: the committed copy shows its figures, and it runs end to end (small setting)."""
import os

import nbformat

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


def test_notebook_runs_end_to_end_in_the_fast_setting(monkeypatch):
    from nbclient import NotebookClient
    monkeypatch.setenv("SEPT_FAST", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    assert "setting: fast" in "".join(o.get("text", "") for o in outputs(nb))
    assert not library_notices(nb)
