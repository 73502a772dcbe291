"""ops/prometheus/edge-agent.rules.yml under promtool: the rules parse, and
their unit tests (ops/prometheus/tests/) fire and clear every alert on
synthetic series. A rule that never fires fails its unit test."""

from __future__ import annotations

import subprocess

import yaml
from prom_tools import REPO, RULE_TESTS, RULES, binary, rules

OPERATIONS = REPO / "docs" / "OPERATIONS.md"


def _promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules():
    r = _promtool("check", "rules", str(RULES))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_unit_tests_pass():
    assert RULE_TESTS
    r = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_clearing():
    """Each alert has an eval_time where it is expected to fire and one where
    it is expected to be quiet, and carries a runbook and a severity."""
    fires, quiet = set(), set()
    for path in RULE_TESTS:
        for t in yaml.safe_load(path.read_text())["tests"]:
            for c in t["alert_rule_test"]:
                (fires if c["exp_alerts"] else quiet).add(c["alertname"])
    alerts = {r["alert"] for r in rules()}
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown clearing"
    for r in rules():
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["runbook"] == f"docs/OPERATIONS.md#{r['alert'].lower()}", r["alert"]
        assert f"\n### {r['alert']}\n" in OPERATIONS.read_text(), f"no runbook entry for {r['alert']}"


def test_a_rule_that_never_fires_fails_its_unit_test(tmp_path):
    """The unit tests can fail: with any one alert's expression replaced by
    one that never holds, promtool test rules fails and names that alert."""
    tests = [yaml.safe_load(p.read_text()) for p in RULE_TESTS]
    for i, rule in enumerate(rules()):
        broken = yaml.safe_load(RULES.read_text())
        broken["groups"][0]["rules"][i]["expr"] = "vector(0) > 1"
        (tmp_path / "edge-agent.rules.yml").write_text(yaml.safe_dump(broken))
        files = []
        for n, t in enumerate(tests):
            t = dict(t, rule_files=[str(tmp_path / "edge-agent.rules.yml")])
            f = tmp_path / f"t{n}.yml"
            f.write_text(yaml.safe_dump(t))
            files.append(str(f))
        r = _promtool("test", "rules", *files)
        assert r.returncode != 0 and rule["alert"] in r.stdout + r.stderr, (rule["alert"], r.stdout[-2000:])
