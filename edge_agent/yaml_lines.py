"""YAML files validated by a pydantic model, with errors that say where.

The YAML is loaded keeping the line of every key path (``load_yaml_with_lines``;
a duplicate key is an error, not a silent overwrite); ``validate_with_lines``
validates it and turns each pydantic error into ``file:line: key.path: what``,
or names the command-line override an error is about. ``merge_overrides`` lays
nested overrides over the file's data. Used for the daemon's config
(config/) and for each model's model.yaml (runtime/model_spec.py).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError


def _construct(node: yaml.Node, path: tuple, lines: dict[tuple, int], loader: yaml.SafeLoader):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if key in out:
                raise ConfigError(f"{_fmt(path + (key,))}: duplicate key (line {knode.start_mark.line + 1})")
            out[key] = _construct(vnode, path + (key,), lines, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), lines, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _fmt(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def load_yaml_with_lines(text: str, source: str) -> tuple[object, dict[tuple, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple, int] = {}
        data = _construct(node, (), lines, loader) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    return data, lines


def merge_overrides(data: object, overrides: Mapping) -> object:
    """``data`` as the YAML file holds it, with ``overrides`` (nested the same way) laid over it."""
    if not isinstance(data, dict):
        return data  # not a mapping: validation says so
    out = dict(data)
    for key, value in overrides.items():
        below = out.get(key)
        out[key] = merge_overrides(below, value) if isinstance(value, Mapping) and isinstance(below, dict) else value
    return out


def _flatten(overrides: Mapping, prefix: tuple = ()) -> Dict[tuple, object]:
    out: Dict[tuple, object] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _named(loc: tuple, msg: str, paths) -> List[tuple]:
    """The key paths an error is about: at, under or above its location; for a rule over the
    whole configuration (location: top level), the keys its message names."""
    if loc:
        return [p for p in paths if p[:len(loc)] == loc or loc[:len(p)] == p]
    return sorted((p for p in paths if _fmt(p) in msg), key=lambda p: msg.index(_fmt(p)))


def validate_with_lines(model_cls: type[BaseModel], data: object, lines: Dict[tuple, int], source: str,
                        overrides: Optional[Mapping] = None):
    """Validate ``data``; on failure raise ConfigError naming each key path and its line, or the
    command-line overrides (already merged into ``data``) the error is about."""
    try:
        return model_cls.model_validate(data if data is not None else {})
    except ValidationError as e:
        given = _flatten(overrides or {})
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            kind = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            named = _named(loc, kind, given)
            if named:
                said = ", ".join(f"{_fmt(p)}={given[p]}" for p in named)
                msgs.append(f"command-line override {said}: {_fmt(loc)}: {kind.replace('Value error, ', '', 1)}")
                continue
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            if line is None:  # a rule over the whole file: the line of the first key it names
                line = next((lines[p] for p in _named(loc, kind, lines) if p), lines.get(()))
            msgs.append(f"{source}:{line or '?'}: {_fmt(loc)}: {kind}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(msgs)) from None
