"""edge_agent.compat.slotted_dataclass: ``dataclass(slots=True)`` on Python 3.8."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Optional

import numpy as np
import pytest

from edge_agent.compat import slotted_dataclass
from edge_agent.types import InferRequest, InferResponse


@slotted_dataclass
class Point:
    x: int
    y: Optional[int] = None
    tags: dict = dataclasses.field(default_factory=dict)


@slotted_dataclass(frozen=True)
class Frozen:
    a: int = 1


@slotted_dataclass
class Point3(Point):
    z: int = 0


def test_instances_have_slots_and_no_dict():
    p = Point(1)
    assert Point.__slots__ == ("x", "y", "tags")
    assert not hasattr(p, "__dict__")
    with pytest.raises(AttributeError):
        p.other = 1


def test_defaults_and_factories_survive_the_rebuild():
    a, b = Point(1), Point(2, 5)
    assert (a.y, b.y) == (None, 5)
    a.tags["k"] = 1
    assert b.tags == {} and a.tags is not b.tags  # a fresh dict each time
    assert a == Point(1, None, {"k": 1}) and repr(b) == "Point(x=2, y=5, tags={})"
    assert dataclasses.is_dataclass(a) and [f.name for f in dataclasses.fields(a)] == ["x", "y", "tags"]
    assert dataclasses.replace(b, y=6).y == 6 and copy.copy(b) == b
    assert pickle.loads(pickle.dumps(b)) == b


def test_frozen_and_inherited():
    f = Frozen()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.a = 2
    p = Point3(1, z=3)
    assert Point3.__slots__ == ("z",) and not hasattr(p, "__dict__")  # x, y, tags: the base's slots
    assert (p.x, p.y, p.z) == (1, None, 3)


def test_a_class_that_already_has_slots_is_refused():
    with pytest.raises(TypeError, match="already specifies __slots__"):
        @slotted_dataclass
        class Twice:
            __slots__ = ("a",)
            a: int


def test_request_and_response_stay_slotted():
    # The hot path's objects: no per-instance __dict__ (docs/BENCHMARKS.md; measured in the i17 report).
    req = InferRequest("m", {"x": np.zeros(1)})
    resp = InferResponse("m", "1", {})
    for obj in (req, resp):
        assert not hasattr(obj, "__dict__")
    assert req.parameters == {} and req.parameters is not InferRequest("m", {}).parameters
