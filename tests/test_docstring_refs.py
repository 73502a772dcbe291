"""Docstrings, comments and docs name only files and modules that exist (issue 16:
a docstring naming a module that no longer exists is a bug).

Scanned: edge_agent/, scripts/, docs/ and README.md. A file mention (``codec.py``,
``transports/httpserver/flow.py``, ``tests/cache/test_front.py``, a relative link
``../edge_agent/credentials.py``) must name a file of the checkout: a bare name any
file of that name, a path a file whose path ends so. A module path
(``edge_agent.serving.codec``, ``edge_agent.compat.slotted_dataclass``) must name a
package or module, then a name that module or package defines; logger names
(``getLogger("edge_agent.http")``) are names, not modules. The checker's own tests
at the end show it catching each kind.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Set

from daemon_proc import REPO

SCANNED = ("edge_agent/", "scripts/", "docs/", "README.md")
# Files of other projects, named where our code explains itself against them.
ELSEWHERE = {
    "onnxruntime_inference_collection.py": "ONNX Runtime's Python wrapper (runtime/providers.py)",
}
FILE_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[A-Za-z_][\w-]*\.py)\b")
MODULE_REF = re.compile(r"(?<![\w.])edge_agent(?:\.[A-Za-z_]\w*)+")
LOGGER = re.compile(r"getLogger\(\s*[\"']([\w.]+)[\"']")


def checkout_files(repo: Path) -> List[str]:
    """Every file git tracks, and those it would (new, not ignored), relative to ``repo``."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.splitlines() if (repo / f).is_file()})


def _module_ok(ref: str, files: Set[str], read) -> bool:
    parts = ref.split(".")
    where = parts[0]  # edge_agent
    for i, name in enumerate(parts[1:], 1):
        if f"{where}/{name}/__init__.py" in files:
            where = f"{where}/{name}"
            continue
        if f"{where}/{name}.py" in files:
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            return nxt is None or bool(re.search(rf"\b{re.escape(nxt)}\b", read(f"{where}/{name}.py")))
        # a name the package itself defines or imports (edge_agent.cache.CacheFront)
        return bool(re.search(rf"\b{re.escape(name)}\b", read(f"{where}/__init__.py")))
    return True


def dangling(texts: Dict[str, str], files: Iterable[str], read=None) -> List[str]:
    """``path:line: name`` for each mention in ``texts`` (path -> text) of a file or module
    that is not among ``files`` (paths relative to the checkout)."""
    files = set(files)
    names = {f.rsplit("/", 1)[-1] for f in files}
    read = read or (lambda f: texts.get(f, ""))
    loggers = {name for text in texts.values() for name in LOGGER.findall(text)}
    out = []
    for path, text in sorted(texts.items()):
        for n, line in enumerate(text.splitlines(), 1):
            for ref in FILE_REF.findall(line):
                if ref in ELSEWHERE:
                    continue
                if ref.startswith(("./", "../")):
                    ok = os.path.normpath(os.path.join(os.path.dirname(path), ref)) in files
                elif "/" in ref:
                    ok = any(f == ref or f.endswith("/" + ref) for f in files)
                else:
                    ok = ref in names
                if not ok:
                    out.append(f"{path}:{n}: {ref}")
            for ref in MODULE_REF.findall(line):
                if ref not in loggers and "__" not in ref and not _module_ok(ref, files, read):
                    out.append(f"{path}:{n}: {ref}")
    return out


def test_docstrings_and_docs_name_only_files_that_exist():
    files = checkout_files(REPO)
    scanned = [f for f in files if f.startswith(SCANNED) and f.endswith((".py", ".md", ".sh"))]
    texts = {f: (REPO / f).read_text() for f in scanned}
    assert dangling(texts, files, lambda f: (REPO / f).read_text() if (REPO / f).is_file() else "") == []


# --- the checker catches each kind -----------------------------------------------------

FILES = ["edge_agent/__init__.py", "edge_agent/serving/__init__.py", "edge_agent/serving/codec.py",
         "edge_agent/transports/__init__.py", "edge_agent/transports/httpserver/__init__.py",
         "edge_agent/transports/httpserver/flow.py", "tests/cache/test_front.py", "docs/X.md"]


def _dangling(text: str, path: str = "edge_agent/serving/codec.py") -> List[str]:
    sources = {"edge_agent/serving/codec.py": "def decode(): pass\n", "edge_agent/serving/__init__.py": "from .codec import decode\n"}
    return dangling({path: text}, FILES, lambda f: sources.get(f, ""))


def test_files_that_exist_pass():
    assert _dangling("codec.py, serving/codec.py, transports/httpserver/flow.py, tests/cache/test_front.py, "
                     "https://github.com/encode/uvicorn/blob/master/uvicorn/server.py") == []
    assert _dangling("[flow](../edge_agent/transports/httpserver/flow.py)", "docs/X.md") == []


def test_a_module_that_is_gone_is_caught():
    assert _dangling('"""... the service\'s job (validation.py)."""') == ["edge_agent/serving/codec.py:1: validation.py"]


def test_a_module_that_became_a_package_is_caught():
    assert _dangling("# see transports/httpserver.py") == ["edge_agent/serving/codec.py:1: transports/httpserver.py"]


def test_a_path_to_a_moved_file_is_caught():
    assert _dangling("tests/test_front.py holds the table") == ["edge_agent/serving/codec.py:1: tests/test_front.py"]
    assert _dangling("[x](../edge_agent/codec.py)", "docs/X.md") == ["docs/X.md:1: ../edge_agent/codec.py"]


def test_module_paths_are_checked_down_to_the_name_they_end_in():
    assert _dangling("edge_agent.serving.codec and edge_agent.serving.codec.decode, edge_agent.serving.decode") == []
    assert _dangling("edge_agent.serving.validation") == ["edge_agent/serving/codec.py:1: edge_agent.serving.validation"]
    assert _dangling("edge_agent.serving.codec.encode") == ["edge_agent/serving/codec.py:1: edge_agent.serving.codec.encode"]
    assert _dangling('log = logging.getLogger("edge_agent.batcher")') == []
