"""The layout rules of the code and its tests (issue 16), checked so they stay true.

- Every package's ``__init__.py`` docstring says what lives there: it names each of
  its modules (``name.py``) and subpackages (``name/``).
- Tests mirror the package: a folder of tests is a folder of edge_agent/ (or one of
  the few named in ``OTHER_FOLDERS``) and tests/README.md says what it holds; a test at
  the top of tests/ is about a top-level module (``test_<module>[_what].py``) or the
  whole tree (``WHOLE_TREE``).
- One way to import test helpers (tests/README.md): by plain name; never ``tests.x``,
  no ``sys.path`` edits, no test module or conftest imported by another module, helper
  names unique. No exceptions but the daemon-side failpoint (``SYS_PATH_OK``).

Each rule is a function over a tree; the tests at the end build a small tree that
breaks it, so each is shown to catch what it is for.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from daemon_proc import REPO

PACKAGE = REPO / "edge_agent"
TESTS = REPO / "tests"

# Folders of tests that are not folders of edge_agent/, and what they test.
OTHER_FOLDERS = {
    "scripts": "scripts/",
    "fuzz": "the codec and the HTTP server, by seeded fuzzers",
    "mqtt": "edge_agent/transports/mqtt/ (its tests were here before the package)",
}
# Tests at the top of tests/ that are about the whole tree, not one module.
WHOLE_TREE = {
    "test_readme.py", "test_docs.py", "test_py38.py", "test_layout.py", "test_docstring_refs.py",
    "test_reload_config.py",  # SIGHUP on the real daemon: config, repository and transports together
}
# The one file that may edit sys.path: it runs in the daemon under test, not in pytest.
SYS_PATH_OK = {"tests/ota/failpoint/sitecustomize.py"}


# --- the rules -------------------------------------------------------------------


def unlisted_modules(package: Path) -> list[str]:
    """``pkg/__init__.py: name.py`` for every module or subpackage its docstring does not name."""
    out = []
    for init in sorted(package.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        here = init.parent
        names = [p.name for p in here.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        names += [p.name + "/" for p in here.iterdir() if (p / "__init__.py").is_file()]
        for name in sorted(names):
            if not re.search(r"(?<![\w.])" + re.escape(name) + (r"(?!\w)" if name.endswith("/") else r"\b"), doc):
                out.append(f"{init.relative_to(package.parent)}: {name}")
    return out


def _test_dirs(tests: Path) -> list[Path]:
    return sorted({p.parent for p in tests.rglob("test_*.py")} - {tests})


def misplaced_tests(tests: Path, package: Path) -> list[str]:
    """Test folders that mirror nothing or that tests/README.md does not describe, and
    top-level tests of no top-level module."""
    out = []
    readme = (tests / "README.md").read_text() if (tests / "README.md").is_file() else ""
    for d in _test_dirs(tests):
        rel = d.relative_to(tests).as_posix()
        if not (package / rel / "__init__.py").is_file() and rel not in OTHER_FOLDERS:
            out.append(f"tests/{rel}/: no edge_agent/{rel}/ package to mirror")
        if f"`{rel}/`" not in readme:
            out.append(f"tests/{rel}/: not described in tests/README.md")
    modules = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    for t in sorted(tests.glob("test_*.py")):
        stem = t.stem[len("test_"):]
        if t.name not in WHOLE_TREE and not any(stem == m or stem.startswith(m + "_") for m in modules):
            out.append(f"tests/{t.name}: about no top-level module; move it to the folder of what it tests")
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _sys_path_edits(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("insert", "append", "extend") and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "path" and isinstance(node.func.value.value, ast.Name)
                and node.func.value.value.id == "sys"):
            lines.append(node.lineno)
    return lines


def helper_import_breaches(tests: Path) -> list[str]:
    """Every import of a test helper that is not by its plain name, every sys.path edit,
    every test module imported by another, every helper name used twice."""
    out = []
    by_name = defaultdict(list)
    for f in sorted(tests.rglob("*.py")):
        rel = f.relative_to(tests.parent).as_posix()
        if f.name != "conftest.py":
            by_name[f.name].append(rel)
        found = []
        for line, mod in _imports(f):
            if mod == "tests" or mod.startswith("tests."):
                found.append((line, f"imports {mod}; import helpers by plain name ({mod.split('.')[-1]})"))
            elif mod.split(".")[0].startswith("test_"):
                found.append((line, f"imports the test module {mod}; move what it shares into a helper module"))
            elif mod.split(".")[0] == "conftest":
                found.append((line, "imports a conftest (which one depends on sys.path); move what it shares into a helper module"))
        if rel not in SYS_PATH_OK:
            found += [(line, "edits sys.path; pytest.ini's pythonpath and pytest put helpers there") for line in _sys_path_edits(f)]
        out += [f"{rel}:{line}: {what}" for line, what in sorted(found)]
    out += [f"{name}: in {', '.join(where)}; a plain-name import finds only one" for name, where in by_name.items() if len(where) > 1]
    return out


# --- this tree -------------------------------------------------------------------


def test_every_package_says_what_lives_there():
    assert unlisted_modules(PACKAGE) == []


def test_tests_mirror_the_package():
    assert misplaced_tests(TESTS, PACKAGE) == []


def test_helpers_are_imported_one_way():
    assert helper_import_breaches(TESTS) == []


# --- each rule catches what it is for ------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    pkg = tmp_path / "edge_agent"
    (pkg / "serving").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Top.\n\n  serving/  the core\n  config.py  config\n"""\n')
    (pkg / "config.py").write_text("")
    (pkg / "serving" / "__init__.py").write_text('"""Core.\n\n  batcher.py  the batcher\n"""\n')
    (pkg / "serving" / "batcher.py").write_text("")
    tests = tmp_path / "tests"
    (tests / "serving").mkdir(parents=True)
    (tests / "README.md").write_text("- `serving/`: edge_agent/serving/\n")
    (tests / "helper.py").write_text("X = 1\n")
    (tests / "test_config.py").write_text("from helper import X\n")
    (tests / "serving" / "test_batcher.py").write_text("from helper import X\n")
    assert unlisted_modules(pkg) == [] and misplaced_tests(tests, pkg) == [] and helper_import_breaches(tests) == []
    return pkg, tests


def test_a_module_missing_from_its_packages_docstring_is_caught(tree):
    pkg, _ = tree
    (pkg / "serving" / "codec.py").write_text("")
    (pkg / "serving" / "sub").mkdir()
    (pkg / "serving" / "sub" / "__init__.py").write_text('"""Sub."""\n')
    assert unlisted_modules(pkg) == ["edge_agent/serving/__init__.py: codec.py", "edge_agent/serving/__init__.py: sub/"]


def test_a_module_named_only_as_part_of_another_name_is_caught(tree):
    pkg, _ = tree
    (pkg / "serving" / "__init__.py").write_text('"""Core.\n\n  batcher.py  the batcher; see also mybatcher.py\n"""\n')
    (pkg / "serving" / "mybatcher.py").write_text("")
    (pkg / "serving" / "her.py").write_text("")
    assert unlisted_modules(pkg) == ["edge_agent/serving/__init__.py: her.py"]


def test_a_test_outside_its_packages_folder_is_caught(tree):
    pkg, tests = tree
    (tests / "test_batcher_deadline.py").write_text("")
    (tests / "misc").mkdir()
    (tests / "misc" / "test_x.py").write_text("")
    assert misplaced_tests(tests, pkg) == [
        "tests/misc/: no edge_agent/misc/ package to mirror",
        "tests/misc/: not described in tests/README.md",
        "tests/test_batcher_deadline.py: about no top-level module; move it to the folder of what it tests",
    ]


def test_a_test_folder_the_readme_does_not_describe_is_caught(tree):
    pkg, tests = tree
    (tests / "README.md").write_text("nothing\n")
    assert misplaced_tests(tests, pkg) == ["tests/serving/: not described in tests/README.md"]


def test_a_second_way_to_import_helpers_is_caught(tree):
    _, tests = tree
    (tests / "serving" / "test_batcher.py").write_text(
        "import sys\nsys.path.insert(0, '..')\nfrom tests.helper import X\nfrom test_config import Y\nfrom conftest import Z\n")
    (tests / "serving" / "helper.py").write_text("")
    assert helper_import_breaches(tests) == [
        "tests/serving/test_batcher.py:2: edits sys.path; pytest.ini's pythonpath and pytest put helpers there",
        "tests/serving/test_batcher.py:3: imports tests.helper; import helpers by plain name (helper)",
        "tests/serving/test_batcher.py:4: imports the test module test_config; move what it shares into a helper module",
        "tests/serving/test_batcher.py:5: imports a conftest (which one depends on sys.path); move what it shares into a helper module",
        "helper.py: in tests/helper.py, tests/serving/helper.py; a plain-name import finds only one",
    ]
