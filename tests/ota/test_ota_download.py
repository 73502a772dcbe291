import hashlib
import os

import pytest
import requests

from edge_agent.ota.download import download, fetch_bytes
from edge_agent.ota.errors import ArtifactDigestMismatch, ArtifactSizeMismatch, DownloadFailed

FAST = (0.01, 0.05)


@pytest.fixture
def blob(registry):
    data = os.urandom(300_000)
    (registry / "blob.bin").write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_devserver_range_semantics(devserver, blob):
    data, _ = blob
    url = devserver.url + "/blob.bin"
    r = requests.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = requests.get(url, headers={"Range": "bytes=299990-"})
    assert r.status_code == 206 and r.content == data[299990:]
    r = requests.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = requests.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = requests.head(url)
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(data)) and r.content == b""
    assert requests.get(devserver.url + "/../../etc/passwd").status_code == 404
    assert requests.get(devserver.url + "/missing").status_code == 404


def test_full_download(devserver, blob, tmp_path):
    data, sha = blob
    seen = []
    got = download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, progress=lambda d, t: seen.append(d))
    assert got == len(data) and (tmp_path / "b").read_bytes() == data
    assert not (tmp_path / "b.part").exists()
    assert seen[-1] == len(data) and seen == sorted(seen)
    # Already there and verified: nothing transferred.
    assert download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha) == 0


def test_interrupted_download_resumes_with_range(devserver, blob, tmp_path):
    data, sha = blob
    devserver.cut_after_bytes, devserver.cut_responses = 100_000, 1
    got = download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, attempts=3, backoff_s=FAST)
    assert (tmp_path / "b").read_bytes() == data
    assert got == len(data)  # 100k in the cut attempt + the rest in the resumed one
    ranges = [rng for (_, path, rng, _) in devserver.requests if path == "/blob.bin"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) >= 100_000 - 65536


def test_second_call_transfers_fewer_bytes_than_the_whole(devserver, blob, tmp_path):
    """A cut that exhausts this call's attempts; the next call (e.g. after a restart) resumes."""
    data, sha = blob
    devserver.cut_after_bytes, devserver.cut_responses = 120_000, 1
    with pytest.raises(DownloadFailed):
        download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, attempts=1)
    part = (tmp_path / "b.part").stat().st_size
    assert 0 < part < len(data)
    second = download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, attempts=1)
    assert second == len(data) - part < len(data)
    assert (tmp_path / "b").read_bytes() == data


def test_server_without_range_support_restarts_cleanly(devserver, blob, tmp_path):
    data, sha = blob
    (tmp_path / "b.part").write_bytes(data[:50_000])
    devserver.ignore_range = True
    assert download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha) == len(data)
    assert (tmp_path / "b").read_bytes() == data


def test_torn_part_file_is_detected_and_redownloaded(devserver, blob, tmp_path):
    data, sha = blob
    (tmp_path / "b.part").write_bytes(b"\0" * 50_000)  # what a power cut can leave behind
    got = download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, attempts=2, backoff_s=FAST)
    assert (tmp_path / "b").read_bytes() == data and got == len(data) - 50_000 + len(data)


def test_digest_and_size_mismatch_are_permanent(devserver, blob, tmp_path):
    data, sha = blob
    with pytest.raises(ArtifactDigestMismatch) as e:
        download(devserver.url + "/blob.bin", tmp_path / "b", len(data), "0" * 64, attempts=3, backoff_s=FAST)
    assert e.value.code == "artifact_digest_mismatch"
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.part").exists()
    assert len([r for r in devserver.requests if r[1] == "/blob.bin"]) == 1  # not retried
    with pytest.raises(ArtifactSizeMismatch):
        download(devserver.url + "/blob.bin", tmp_path / "b", len(data) - 1, sha)


def test_http_errors(devserver, tmp_path):
    with pytest.raises(DownloadFailed) as e:
        download(devserver.url + "/missing", tmp_path / "m", 10, "0" * 64, attempts=3, backoff_s=FAST)
    assert e.value.details["status"] == 404
    with pytest.raises(DownloadFailed):
        fetch_bytes("http://127.0.0.1:9/nothing", attempts=2, backoff_s=FAST)


def test_bandwidth_limit_still_completes(devserver, blob, tmp_path):
    data, sha = blob
    assert download(devserver.url + "/blob.bin", tmp_path / "b", len(data), sha, bandwidth_limit_bps=2_000_000) == len(data)


def test_nginx_range_resume(nginx, registry, blob, tmp_path):
    url, _ = nginx
    data, sha = blob
    (tmp_path / "b.part").write_bytes(data[:123_456])
    got = download(url + "/blob.bin", tmp_path / "b", len(data), sha)
    assert got == len(data) - 123_456
    assert (tmp_path / "b").read_bytes() == data
