"""Memory admission's estimate and gate (edge_agent/runtime/memory.py), on real model files."""

from __future__ import annotations

import psutil
import pytest
from daemon_proc import copy_digits

from edge_agent.config import Config
from edge_agent.errors import InsufficientMemory
from edge_agent.runtime.memory import MemoryGate, MemoryNeeds, estimate, nvmap_used_bytes

MB = 1024 * 1024


def cfg(tmp_path, **memory) -> Config:
    return Config(paths={"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")},
                  runtime={"providers": ["cpu"]}, memory=memory)


def test_never_measured_need_is_file_size_times_load_factor_then_the_measurement(tmp_path):
    c = cfg(tmp_path, load_factor=7.0, measured_factor=2.0)
    vdir = copy_digits(tmp_path / "models")
    needs = MemoryNeeds(tmp_path / "state")
    est = estimate(c, vdir, needs)
    assert est.need == int((vdir / "model.onnx").stat().st_size * 7.0) and "load_factor" in est.basis
    needs.put(est.digest, 5 * MB)
    again = estimate(c, vdir, MemoryNeeds(tmp_path / "state"))  # read back from disk
    assert again.need == 10 * MB and "measured" in again.basis


def test_gate_refuses_below_the_watermark_and_admits_above(tmp_path):
    vdir = copy_digits(tmp_path / "models")
    need = (vdir / "model.onnx").stat().st_size * 1000
    avail = psutil.virtual_memory().available
    gate = MemoryGate(tmp_path / "state")
    refuse = cfg(tmp_path, load_factor=1000, min_available_mb=(avail - need // 2) // MB)
    with pytest.raises(InsufficientMemory) as e:
        gate.admit(refuse, "digits", "1", vdir)
    assert e.value.code == "insufficient_memory" and e.value.details["need_bytes"] == need
    admit = cfg(tmp_path, load_factor=1000, min_available_mb=(avail - 4 * need) // MB)
    assert gate.admit(admit, "digits", "1", vdir).need == need
    assert gate.admit(cfg(tmp_path, enabled=False, min_available_mb=10**9), "digits", "1", vdir) is None


def test_nvmap_line_of_a_jetson_meminfo(tmp_path):
    p = tmp_path / "meminfo"
    p.write_text("MemTotal:       31920000 kB\nMemAvailable:   28000000 kB\nNvMapMemFree:      12345 kB\nNvMapMemUsed:     204800 kB\n")
    assert nvmap_used_bytes(p) == 204800 * 1024
    p.write_text("MemTotal: 100 kB\n")
    assert nvmap_used_bytes(p) == 0


def test_a_tensorrt_engine_to_build_adds_its_workspace_until_one_is_cached(tmp_path):
    c = Config(paths={"state_dir": str(tmp_path / "state")}, runtime={"tensorrt": {"workspace_mb": 512}},
               memory={"load_factor": 2.0})
    vdir = copy_digits(tmp_path / "models")
    size = (vdir / "model.onnx").stat().st_size
    needs = MemoryNeeds(tmp_path / "state")
    est = estimate(c, vdir, needs, providers=["tensorrt", "cuda", "cpu"])
    assert est.need == size * 2 + 512 * MB and "TensorRT build workspace 512 MiB" in est.basis
    # An engine cached for this file (runtime/providers.py trt_dirs naming): nothing to build.
    engine = tmp_path / "state" / "trt" / f"{est.digest[:16]}-orin-lib10"
    engine.mkdir(parents=True)
    (engine / "TensorrtExecutionProvider_TRTKernel.engine").write_bytes(b"x")
    assert estimate(c, vdir, needs, providers=["tensorrt", "cpu"]).need == size * 2
    assert estimate(c, vdir, needs, providers=["cpu"]).need == size * 2


def test_a_pipeline_needs_every_step_graph(tmp_path, ocr_build):
    """A pipeline version has no model.onnx: its need is all its steps' graphs together, remembered
    under one key (before, admission looked for model.onnx and every pipeline failed to load)."""
    from edge_agent.runtime.model_spec import load_model_spec

    vdir = ocr_build / "1"
    c = cfg(tmp_path, load_factor=3.0)
    needs = MemoryNeeds(tmp_path / "state")
    est = estimate(c, vdir, needs)
    graphs = [vdir / s.model for s in load_model_spec(vdir / "model.yaml").pipeline]
    assert len(graphs) == 3 and not (vdir / "model.onnx").exists()
    assert est.need == int(sum(g.stat().st_size for g in graphs) * 3.0)
    needs.put(est.digest, 7 * MB)
    assert estimate(c, vdir, MemoryNeeds(tmp_path / "state")).need == int(7 * MB * c.memory.measured_factor)


def test_a_damaged_needs_file_drops_its_bad_entries_and_loads_go_on(tmp_path):
    """One bad number in memory-needs.json (infinity from a hand edit or a bit flip) made every
    later estimate raise OverflowError, so every model load failed (hostile review)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "memory-needs.json").write_text('{"inf": 1e999, "neg": -5, "str": "x", "null": null, "ok": 3145728, "f": 2.0}')
    needs = MemoryNeeds(state)
    assert needs.get("ok") == 3145728 and needs.get("f") == 2
    assert all(needs.get(k) is None for k in ("inf", "neg", "str", "null"))
    (state / "memory-needs.json").write_text("[1, 2")
    assert MemoryNeeds(state).get("ok") is None
