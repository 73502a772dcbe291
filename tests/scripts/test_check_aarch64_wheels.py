"""scripts/check_aarch64_wheels.sh without the registry (--dry-run), and the two pin sets' agreement.

The real check downloads wheels, so it is run by hand before changing a pin;
here its argument handling and the pip commands it would run are checked, and
that requirements-jetpack5.txt pins every runtime dependency requirements.txt has.
"""

from __future__ import annotations

import re
import subprocess

from daemon_proc import REPO

SCRIPT = REPO / "scripts" / "check_aarch64_wheels.sh"


def _names(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if req:
            name, _, version = req.partition("==")
            assert version, f"{path.name}: {req!r} is not pinned with =="
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_jetpack5_set_pins_every_runtime_dependency_for_python38():
    main, jp5 = _names(REPO / "requirements.txt"), _names(REPO / "requirements-jetpack5.txt")
    assert set(main) <= set(jp5), f"missing from requirements-jetpack5.txt: {sorted(set(main) - set(jp5))}"
    assert jp5["onnxruntime"] == "1.16.3"
    assert int(jp5["numpy"].split(".")[0]) < 2


def test_dry_run_checks_each_pin_for_its_python_and_glibc():
    r = _run("--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    cmds = [ln for ln in lines if " pip download " in ln]
    assert len(cmds) == len(_names(REPO / "requirements.txt")) + len(_names(REPO / "requirements-jetpack5.txt"))
    jp5 = [c for c in cmds if "--python-version 3.8 " in c]
    main = [c for c in cmds if "--python-version 3.11 " in c]
    assert len(jp5) == len(_names(REPO / "requirements-jetpack5.txt")) and len(main) + len(jp5) == len(cmds)
    for c in cmds:
        assert "--no-deps --only-binary=:all:" in c and "--platform manylinux2014_aarch64" in c
    # Ubuntu 20.04 (JetPack 5) has glibc 2.31: nothing newer may be accepted.
    assert all("manylinux_2_31_aarch64" in c and "manylinux_2_32_aarch64" not in c for c in jp5)
    assert all("manylinux_2_35_aarch64" in c and "manylinux_2_36_aarch64" not in c for c in main)
    assert any(c.endswith(" onnxruntime==1.16.3") for c in jp5)


def test_usage_errors_exit_2(tmp_path):
    assert _run("--help").returncode == 0
    other = tmp_path / "other.txt"
    other.write_text("numpy==1.24.4\n")
    r = _run("--dry-run", str(other))
    assert r.returncode == 2 and "--python" in r.stderr
    r = _run("--dry-run", "--python", "3.8", "--glibc", "2.27", str(other))
    assert r.returncode == 0 and "manylinux_2_27_aarch64" in r.stdout and "manylinux_2_28" not in r.stdout
    assert _run("--bogus").returncode == 2
    assert _run("--dry-run", str(tmp_path / "absent.txt")).returncode == 2
