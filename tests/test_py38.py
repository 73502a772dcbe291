"""edge_agent/ runs on Python 3.8, the JetPack 5.1.x Python of the fielded Xavier.

Three checks (tests/py38_check.py says what each catches): vermin, an AST scan
for run-time type expressions and 3.9+ methods vermin cannot see, and importing
every module under a Python 3.8 with the JetPack 5 pin set. A failure lists
every ``file:line`` that needs work; ``python tests/py38_check.py`` prints the
same list. The checker's own tests below show each check catching its rule.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import py38_check as check


def _fail_with(findings, what: str) -> None:
    if findings:
        pytest.fail(f"{what}:\n{check.report(findings)}", pytrace=False)


def test_vermin_finds_nothing_newer_than_python38():
    _fail_with(check.vermin(), f"vermin {' '.join(check.VERMIN_ARGS)} edge_agent/ reports constructs newer than Python 3.8")


def test_no_type_expression_or_method_newer_than_python38_at_run_time():
    _fail_with(check.scan(), "edge_agent/ evaluates 3.9+ type expressions or calls 3.9+ methods")


def test_tests_and_scripts_keep_to_python38_too():
    # The suite runs on the Python 3.8 stack, and the bench scripts run on the unit.
    found = check.vermin([check.REPO / "tests", check.REPO / "scripts"])
    for d in ("tests", "scripts"):
        found += check.scan(check.REPO / d)
    _fail_with(found, "tests/ or scripts/ use constructs newer than Python 3.8")


@pytest.fixture(scope="module")
def python38() -> str:
    py = check.find_python38()
    if py is None:
        pytest.skip("no Python 3.8 with the JetPack 5 pin set (scripts/test.sh builds .venv38; or set EDGE_AGENT_PY38)")
    return py


def test_every_module_imports_under_python38(python38):
    _fail_with(check.import_all(python38), f"importing edge_agent/ under {python38}")


# --- the checker's own rules: each one must catch its construct ----------------

BAD = textwrap.dedent('''\
    from __future__ import annotations
    from collections.abc import Callable
    from typing import Literal, Optional, cast

    Alias = dict[str, int]                      # 5
    Verdict = Literal["a", "b"] | None          # 6
    Hook = Callable[[int], None]                # 7

    def f(x: dict[str, int] | None, s, p) -> list[int]:   # 9: annotations: fine
        y = cast(list[int], x)                  # 10
        isinstance(x, int | str)                # 11
        s.removeprefix("a")                     # 12
        p.is_relative_to("/")                   # 13
        n = (x[0] << 8) | x[1]                  # 14: integers: fine
        flags = 1 | 2                           # 15: fine
        z: Optional[int] = None                 # 16: fine
        code = getattr(x, "sqlite_errorcode", 0)  # 17
        return y.sqlite_errorname               # 18
''')


def test_scan_reports_each_run_time_construct_and_nothing_else():
    found = check.scan_source(BAD, "bad.py")
    assert sorted({line for _, line, _ in found}) == [5, 6, 7, 10, 11, 12, 13, 17, 18]
    what = {line: w for _, line, w in found}
    assert "typing.Dict" in what[5] and "typing.Callable" in what[7]
    assert "Python 3.10" in what[6] and "removeprefix" in what[12] and "is_relative_to" in what[13]
    assert "sqlite_errorcode (3.11)" in what[17] and "getattr gives the default" in what[17] and "sqlite_errorname" in what[18]


def test_scan_counts_annotations_where_they_are_evaluated():
    # No `from __future__ import annotations`: a def's annotations run at definition.
    found = check.scan_source("def f(x: list[str]) -> dict[str, int] | None:\n    pass\n", "eager.py")
    assert {(line, "list[...]" in w or "dict[...]" in w or "X | Y" in w) for _, line, w in found} == {(1, True)}
    assert len(found) == 3


def test_scan_of_a_clean_module_is_empty():
    assert check.scan_source("from __future__ import annotations\nfrom typing import Dict\nA = Dict[str, int]\n", "ok.py") == []


def test_vermin_reports_slots_and_functools_cache(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("import functools\nfrom dataclasses import dataclass\n\n"
                   "@dataclass(slots=True)\nclass A:\n    x: int\n\n@functools.cache\ndef f():\n    return 1\n")
    found = check.vermin([bad])
    assert {(line, "dataclass(slots)" in w or "functools.cache" in w) for _, line, w in found} >= {(4, True), (8, True)}
    good = tmp_path / "good.py"
    good.write_text("from __future__ import annotations\n\ndef f(x: dict[str, int] | None) -> list[int]:\n    return []\n")
    assert check.vermin([good]) == []


def test_import_check_reports_the_line_that_breaks_and_who_it_breaks(tmp_path: Path):
    pkg = tmp_path / "edge_agent"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "base.py").write_text("X = 1\nY = undefined_name\n")
    (pkg / "sub" / "user.py").write_text("from ..base import X\n")
    (pkg / "fine.py").write_text("import json\n")
    found = check.import_all(sys.executable, pkg)
    assert len(found) == 1
    where, line, what = found[0]
    assert where.endswith("edge_agent/base.py") and line == 2
    assert "NameError" in what and "edge_agent.base, edge_agent.sub.user" in what
