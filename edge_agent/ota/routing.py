"""May this version be routed? The one answer, for every scan, step and restart.

``routable()`` is the rule, a pure function of what is persisted: the model's
active/previous pointers, its update record and whether the version's
directory is complete on disk. ``RoutingRule`` feeds it and is installed once,
by the daemon at start-up, as the repository's admit hook
(``ModelRepository.admit``): the repository asks it before loading a version
it finds on disk (start-up scan, SIGHUP rescans) and ``ModelRepository.retire``
unloads what it no longer admits (after every OTA step). Nothing else decides.

Before the OTA agent runs, the records are read from disk once per model (the
start-up scan must not load a refused version that could crash ONNX Runtime,
nor one a power cut left unvalidated). Once the agent follows its models it
hands over their live records (``follow``): the same content, since every
record is persisted before its state's work starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Collection, Dict, Optional

from .statemachine import State, UpdateRecord
from .versions import Pointers, is_version_dir, read_pointers

log = logging.getLogger("edge_agent.ota")

# An update not yet validated: its files may be on disk, but no request may reach them.
PRE_CANARY = frozenset({State.DOWNLOADING, State.VERIFYING, State.STAGED})


def routable(version: str, ptr: Pointers, rec: UpdateRecord | None, on_disk: bool = True) -> bool:
    """The rule, first match wins:

    1. active and previous: always (they serve traffic, and a fallback must be there);
    2. the target of a running canary: always (it takes its share);
    3. a version whose directory is gone (keep-K cleanup): never;
    4. no update record: every other version (the model was never updated here);
    5. a refused version (``rec.rejected``): never;
    6. the target of an update not yet validated: never;
    7. anything else on disk: yes.
    """
    if version == ptr.active or version == ptr.previous:
        return True
    if rec is not None and rec.state is State.CANARY and version == rec.target:
        return True
    if not on_disk:
        return False
    if rec is None:
        return True
    if version in rec.rejected:
        return False
    return not (rec.state in PRE_CANARY and version == rec.target)


class RoutingRule:
    """``routable()`` over one daemon's state: installed once as ``repo.admit``.

    ``followed``: the models the OTA agent will follow (``ota.models``; empty
    means every model) -- the others are always admitted."""

    def __init__(self, state_dir: Path, models_dir: Path, followed: Collection[str] = ()) -> None:
        self.state_dir, self.models_dir = Path(state_dir), Path(models_dir)
        self._followed = frozenset(followed) or None  # None: every model
        self._snapshot: Dict[str, Optional[UpdateRecord]] = {}
        self._live: Optional[Callable[[str], UpdateRecord]] = None

    def follow(self, models: Collection[str], record: Callable[[str], UpdateRecord]) -> None:
        """The agent took over: from now on exactly ``models`` are followed, and
        ``record(model)`` is their updater's own record."""
        self._followed, self._live = frozenset(models), record

    def follows(self, model: str) -> bool:
        return self._followed is None or model in self._followed

    def record(self, model: str) -> UpdateRecord | None:
        if self._live is not None:
            return self._live(model)
        if model not in self._snapshot:
            self._snapshot[model] = self._read(model)
        return self._snapshot[model]

    def __call__(self, model: str, version: str) -> bool:
        """The admit hook: may ``version`` of ``model`` be loaded and routed?"""
        if not self.follows(model):
            return True
        on_disk = is_version_dir(self.models_dir / model / version)
        return routable(version, read_pointers(self.state_dir, model), self.record(model), on_disk)

    def _read(self, model: str) -> UpdateRecord | None:
        path = self.state_dir / "ota" / f"{model}.json"
        try:
            return UpdateRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # the agent logs and resets it when it starts
            log.warning("ota: %s unreadable at start-up (%s); loading every version of %s", path, e, model)
            return None
