"""What Python 3.10+ gives and the JetPack 5 units' Python 3.8 lacks.

The fielded Xavier runs Python 3.8 (JetPack 5.1.x is its last line), so the
package keeps to 3.8 (tests/test_py38.py checks it); the few newer conveniences
it wants live here, with one code path on every version.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def slotted_dataclass(cls: "type[T] | None" = None, **kwargs: Any) -> Any:
    """``@dataclass(slots=True)`` for Python 3.8: the dataclass rebuilt with
    ``__slots__`` naming its fields, as CPython 3.10's ``_add_slots`` does.

    Why slots: the request objects are made and read once or more per request
    on the hot path; a slotted instance has no ``__dict__`` (less memory per
    object, no per-instance dict allocation) and reads its fields through
    descriptors. Same use as ``@dataclass``: ``@slotted_dataclass`` or
    ``@slotted_dataclass(frozen=True)``. Like 3.10's ``slots=True`` (without
    3.11's ``weakref_slot``), instances cannot be weakly referenced, and a
    method using zero-argument ``super()`` would see the class before the rebuild.
    """

    def wrap(c: type) -> type:
        if "__slots__" in c.__dict__:
            raise TypeError(f"{c.__name__} already specifies __slots__")
        c = dataclasses.dataclass(c, **kwargs)
        body = dict(c.__dict__)
        names = tuple(f.name for f in dataclasses.fields(c))
        inherited = {s for base in c.__mro__[1:] for s in base.__dict__.get("__slots__", ())}
        body["__slots__"] = tuple(n for n in names if n not in inherited)
        # The class attributes holding defaults would shadow the slots'
        # descriptors; the generated __init__ keeps the defaults itself.
        for name in names:
            body.pop(name, None)
        body.pop("__dict__", None)
        body.pop("__weakref__", None)
        slotted = type(c)(c.__name__, c.__bases__, body)
        slotted.__qualname__ = c.__qualname__
        return slotted

    return wrap if cls is None else wrap(cls)
