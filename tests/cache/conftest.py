import subprocess

import pytest

from cache_helpers import FakeClock, can_mount


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real, small tmpfs: factory(size) -> path. Skips where mounting is not allowed."""
    mounted = []

    def make(size: str, name: str = "fs"):
        if not can_mount():
            pytest.skip("needs root to mount a tmpfs")
        path = tmp_path / name
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
