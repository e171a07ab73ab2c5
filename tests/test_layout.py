"""The project's shape, as the README states it: the story script's size, SePT alone on its main path, plumbing/
without an import circle and never importing the story, the README's length and its links."""
import ast
import os
import re

from conftest import ROOT


def source(name):
    return open(os.path.join(ROOT, name)).read()


def test_the_story_script_and_eval_math_stay_within_their_sizes():
    tree = ast.parse(source("sept_mini.py"))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert len(source("sept_mini.py").splitlines()) <= 450
    assert main.end_lineno - main.lineno + 1 <= 80
    assert len(source("eval_math.py").splitlines()) <= 170


def test_the_rivals_live_in_the_last_section_and_plug_in_at_one_point():
    lines = source("sept_mini.py").splitlines()
    rivals = next(i for i, line in enumerate(lines) if line.startswith("# SePT's rivals"))
    hits = [i for i, line in enumerate(lines[:rivals]) if re.search("advantages|objective", line)]
    assert len(hits) == 1 and "objective(args, tokenizer)" in lines[hits[0]], [lines[i] for i in hits]


def test_plumbing_has_no_import_circle_and_never_imports_the_story():
    folder = os.path.join(ROOT, "plumbing")
    imports = {}
    for name in os.listdir(folder):
        if name.endswith(".py") and name != "__init__.py":
            text = open(os.path.join(folder, name)).read()
            assert "sept_mini" not in re.findall(r"^\s*(?:import|from) (\w+)", text, re.M)
            imports[name[:-3]] = set(re.findall(r"^\s*from plumbing(?:\.(\w+))? import (\w+)", text, re.M))
    graph = {m: {sub or name for sub, name in deps} & set(imports) for m, deps in imports.items()}

    def reaches(start, target, seen=()):
        return any(d == target or (d not in seen and reaches(d, target, (*seen, d))) for d in graph[start])
    assert not [m for m in graph if reaches(m, m)]


def test_the_readme_is_short_and_every_docs_page_is_linked():
    readme = source("README.md")
    assert len(readme.splitlines()) <= 200
    for page in os.listdir(os.path.join(ROOT, "docs")):
        assert f"(docs/{page})" in readme, page
    for target in re.findall(r"\]\(((?!http)[^)#]+)\)", readme):
        assert os.path.exists(os.path.join(ROOT, target)), target


def test_the_top_level_holds_the_cards_files_and_the_folders_that_explain_themselves():
    allowed = {"sept_mini.py", "eval_math.py", "grading.py", "toy_world.py", "notebooks", "tests", "requirements.txt",
               "README.md", "LICENSE", "CITATION.cff", "docs", "experiments", "plumbing", ".ci", ".git", ".gitignore",
               "constraints.txt",  # the library versions the published digits were made with (the install line's -c)
               "teachers"}  # the answer key, outside every folder a student opens (docs/course.md)
    tracked = {line.split("/")[0] for line in os.popen(f"git -C {ROOT} ls-files").read().split()}
    assert tracked <= allowed, tracked - allowed
