"""Find what keeps edge_agent/ from running on Python 3.8 (JetPack 5.1.x).

Three checks, each catching what the others cannot:

1. ``vermin --target=3.8- --violations`` over edge_agent/: stdlib members,
   keyword arguments and syntax newer than 3.8 (``functools.cache``,
   ``dataclass(slots=True)``, ``asyncio.to_thread`` ...). Annotations are not
   evaluated (every module has ``from __future__ import annotations``), so
   ``dict[str, int]`` in an annotation is fine and is not reported.
2. ``scan()``: an AST pass for what vermin does not see because it cannot
   know the type of a name: ``dict[...]``/``X | None`` evaluated at import or
   call time (type aliases, ``cast``, ``isinstance``), and 3.9+ methods called
   on a variable (``s.removeprefix``, ``path.is_relative_to`` ...).
3. ``import_all(python)``: imports every module under edge_agent/ in a Python
   3.8 subprocess with the JetPack 5 pin set (pydantic 2.10 evaluates field
   annotations when a model class is created, so ``int | None`` there is only
   checked by really importing it).

``python tests/py38_check.py [--python PY38]`` prints every finding as
``path:line: what`` and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edge_agent"

# Subscripting these at run time needs 3.9 (PEP 585); typing.Dict etc. work on 3.8.
TYPING_ALIAS = {"dict": "Dict", "list": "List", "tuple": "Tuple", "set": "Set", "frozenset": "FrozenSet", "type": "Type"}
PEP585 = set(TYPING_ALIAS)
PEP585_MODULES = {"collections", "abc", "re", "os", "contextlib", "queue"}
# Names whose `X | Y` is a type union (3.10), not an integer or set operation.
TYPE_NAMES = PEP585 | {"int", "float", "str", "bytes", "bool", "complex", "object", "bytearray", "memoryview"}
# Methods that exist only from 3.9/3.10 on, called on a receiver whose type a
# linter cannot know (vermin reports them only on literals or known modules).
NEW_METHODS = {
    "removeprefix": "str/bytes.removeprefix (3.9)",
    "removesuffix": "str/bytes.removesuffix (3.9)",
    "is_relative_to": "Path.is_relative_to (3.9)",
    "with_stem": "Path.with_stem (3.9)",
    "hardlink_to": "Path.hardlink_to (3.10)",
    "bit_count": "int.bit_count (3.10)",
    "randbytes": "random.randbytes (3.9)",
    "to_thread": "asyncio.to_thread (3.9)",
}

# Attributes that exist only from 3.11 on; read directly or through getattr(x, "name")
# (where they silently come back as the default on 3.8: sqlite3 errors then have no code).
NEW_ATTRS = {
    "sqlite_errorcode": "sqlite3.Error.sqlite_errorcode (3.11)",
    "sqlite_errorname": "sqlite3.Error.sqlite_errorname (3.11)",
    "add_note": "BaseException.add_note (3.11)",
    "__notes__": "BaseException.__notes__ (3.11)",
}

Finding = Tuple[str, int, str]  # (path relative to the repo, line, what)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def modules(package: Path = PACKAGE) -> List[str]:
    """Every module under the package, by dotted name, in a stable order."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


# --- 1. vermin -------------------------------------------------------------------

VERMIN_ARGS = ["--target=3.8-", "--no-tips", "--violations", "--no-eval-annotations", "--format", "parsable"]


def vermin(paths: Optional[List[Path]] = None, python: str = sys.executable) -> List[Finding]:
    """vermin's violations as findings. Its parsable lines are
    ``file:line:col:py2:py3:feature``; the last line (no file) is the verdict."""
    paths = paths or [PACKAGE]
    # vermin has no __main__ module: call its console-script function.
    run = "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())"
    r = subprocess.run([python, "-c", run, *VERMIN_ARGS, *map(str, paths)], capture_output=True, text=True, cwd=REPO)
    # Its last line is the verdict (no file name): without it vermin did not run.
    if r.returncode not in (0, 1) or not re.search(r"^:::", r.stdout, re.M):
        raise RuntimeError(f"vermin failed (exit {r.returncode}): {r.stderr or r.stdout}")
    found = []
    for line in r.stdout.splitlines():
        m = re.match(r"^(.+?):(\d*):(\d*):([^:]*):([^:]*):(.*)$", line)
        if not m or not m.group(1) or not m.group(6):
            continue
        found.append((_rel(Path(m.group(1))), int(m.group(2) or 0), f"{m.group(6).strip()} (needs Python {m.group(5)})"))
    return found


# --- 2. the AST scan -------------------------------------------------------------

def _annotation_nodes(tree: ast.AST) -> set:
    """ids of every node inside an annotation (not evaluated at run time under
    ``from __future__ import annotations``)."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    roots.append(arg.annotation)
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    inside = set()
    for root in roots:
        inside.update(id(n) for n in ast.walk(root))
    return inside


def _is_typeish(node: ast.AST) -> bool:
    """True when ``node`` as an operand of ``|`` is a type, not a number or a set:
    None, a builtin type, or a subscripted generic (``Literal[...]``, ``dict[...]``;
    not ``buf[i]``)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name) and node.id in TYPE_NAMES:
        return True
    if isinstance(node, ast.Subscript):
        v = node.value
        name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""
        return name in PEP585 or name[:1].isupper()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_typeish(node.left) or _is_typeish(node.right)
    return False


def _imported_generics(tree: ast.AST) -> Dict[str, str]:
    """Names bound by ``from collections.abc import Callable`` and the like:
    subscripting them at run time needs 3.9 (typing.Callable works on 3.8)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PEP585_MODULES:
            for alias in node.names:
                if alias.name[:1].isupper():
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _pep585_base(node: ast.AST, imported: Dict[str, str]) -> Optional[str]:
    v = node.value if isinstance(node, ast.Subscript) else None
    if isinstance(v, ast.Name) and v.id in PEP585:
        return v.id
    if isinstance(v, ast.Name) and v.id in imported:
        return imported[v.id]
    if isinstance(v, ast.Attribute) and isinstance(v.value, (ast.Name, ast.Attribute)):
        base = v.value.id if isinstance(v.value, ast.Name) else v.value.attr
        if base in PEP585_MODULES and v.attr[:1].isupper():
            return f"{base}.{v.attr}"
    return None


def scan_source(source: str, filename: str) -> List[Finding]:
    tree = ast.parse(source, filename)
    # Without `from __future__ import annotations` an annotation is evaluated
    # when its function or class is defined: then it counts too.
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)
    skip = _annotation_nodes(tree) if lazy else set()
    imported = _imported_generics(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Subscript):
            base = _pep585_base(node, imported)
            if base:
                alias = TYPING_ALIAS.get(base, base.rsplit(".", 1)[-1])
                found.append((filename, line, f"`{base}[...]` evaluated at run time needs Python 3.9 (use typing.{alias} or quote it)"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and (_is_typeish(node.left) or _is_typeish(node.right)):
            found.append((filename, line, "`X | Y` type union evaluated at run time needs Python 3.10 (use typing.Optional / typing.Union)"))
        elif isinstance(node, ast.Attribute) and node.attr in NEW_ATTRS:
            found.append((filename, line, f"{NEW_ATTRS[node.attr]} is not in Python 3.8"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in NEW_ATTRS):
            found.append((filename, line, f"{NEW_ATTRS[node.args[1].value]} is not in Python 3.8 ({node.func.id} gives the default there)"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NEW_METHODS:
            recv = node.func.value
            if node.func.attr == "to_thread" and not (isinstance(recv, ast.Name) and recv.id == "asyncio"):
                continue
            found.append((filename, line, f"{NEW_METHODS[node.func.attr]} is not in Python 3.8"))
    # A line marked `# py38: fallback` handles the older Python itself (the
    # marker says so where a reader sees it); only the 3.11 attributes use it.
    lines = source.splitlines()
    found = [f for f in found if not ("(3.11)" in f[2] and 0 < f[1] <= len(lines)
                                      and "# py38: fallback" in lines[f[1] - 1])]
    # A BinOp nested in a reported BinOp is the same finding.
    return sorted(set(found))


def scan(package: Path = PACKAGE) -> List[Finding]:
    found = []
    for path in sorted(package.rglob("*.py")):
        found += scan_source(path.read_text(), _rel(path))
    return found


# --- 3. import everything under 3.8 -----------------------------------------------

_IMPORTER = r"""
import importlib, json, os, sys, traceback
# Heavy third-party modules once, here; each edge_agent module is then imported
# in a forked child of its own, so one module's failure (and the half-run
# module it leaves behind) cannot change what the next import sees.
for dep in ("numpy", "onnxruntime", "pydantic", "yaml", "orjson", "prometheus_client", "paho.mqtt.client", "cryptography"):
    try:
        importlib.import_module(dep)
    except Exception:
        pass
out = []
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res = None
        try:
            importlib.import_module(name)
        except BaseException as e:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if "/edge_agent/" in f.filename]
            f = frames[-1] if frames else None
            res = {"module": name, "error": "%s: %s" % (type(e).__name__, (str(e).splitlines() or [""])[0][:300]),
                   "file": f.filename if f else None, "line": f.lineno if f else 0}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = json.loads(data) if data else {"module": name, "error": "the importing process died", "file": None, "line": 0}
    if res:
        out.append(res)
print(json.dumps({"version": list(sys.version_info[:3]), "failures": out}))
"""


def import_all(python: str, package: Path = PACKAGE) -> List[Finding]:
    """Import every module, each in a clean process (forked from one ``python``
    subprocess). A module that fails is reported at the innermost edge_agent
    line of its traceback, so a failure in types.py that breaks 40 importers
    is one finding naming them."""
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    r = subprocess.run([python, "-c", _IMPORTER, *modules(package)], capture_output=True, text=True, cwd=package.parent, env=env, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{python} could not run the import check: {r.stderr}")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    by_place: Dict[Tuple[str, int, str], List[str]] = {}
    for f in doc["failures"]:
        where = _rel(Path(f["file"])) if f["file"] else f["module"]
        by_place.setdefault((where, f["line"], f["error"]), []).append(f["module"])
    return [(where, line, f"import under Python {'.'.join(map(str, doc['version']))} fails: {err} (breaks {', '.join(mods)})")
            for (where, line, err), mods in sorted(by_place.items())]


def find_python38() -> Optional[str]:
    """The Python 3.8 with the JetPack 5 pin set: $EDGE_AGENT_PY38, this
    interpreter when it is 3.8, or the repo's .venv38 that scripts/test.sh builds."""
    if os.environ.get("EDGE_AGENT_PY38"):
        return os.environ["EDGE_AGENT_PY38"]
    if sys.version_info[:2] == (3, 8):
        return sys.executable
    venv = REPO / ".venv38" / "bin" / "python"
    return str(venv) if venv.exists() else None


def report(findings: List[Finding]) -> str:
    """One line per finding, grouped by file, and the list of files."""
    lines = [f"{path}:{line}: {what}" for path, line, what in sorted(set(findings))]
    files = sorted({path for path, _, _ in findings})
    return "\n".join(lines + [f"-- {len(lines)} finding(s) in {len(files)} file(s): {' '.join(files)}"])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", help="Python 3.8 interpreter with the JetPack 5 pin set (default: see find_python38)")
    args = ap.parse_args(argv)
    findings = vermin() + scan()
    py = args.python or find_python38()
    if py:
        findings += import_all(py)
    else:
        print("py38_check: no Python 3.8 found; import check not run", file=sys.stderr)
    if findings:
        print(report(findings))
        return 1
    print("py38_check: no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
