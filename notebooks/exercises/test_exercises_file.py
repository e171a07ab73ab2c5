"""The exercises as tests, for grading: `python -m pytest notebooks/exercises` checks notebooks/exercises/exercises.py,
`EXERCISES=alice.py python -m pytest notebooks/exercises` another file. One test per exercise: 5 passed is 5/5.
(The project's own suite, `python -m pytest tests`, never collects this folder.)"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

FILE = os.environ.get("EXERCISES") or check.STUDENT_FILE


@pytest.mark.parametrize("name", check.NAMES)
def test_exercise(name):
    lines = []
    assert check.run(name, path=FILE if os.path.exists(FILE) else check.STUBS, log=lines.append), "\n".join(lines)
