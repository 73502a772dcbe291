"""mqtt.labels: what `fleet rollout --select` matches, so plain key=value words only."""

from __future__ import annotations

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError


def test_labels_are_kept_and_default_to_none():
    assert load_config(None).mqtt.labels == {}
    cfg = load_config(None, {"mqtt": {"labels": {"site": "berlin-2", "hw": "orin_nx.16", "ring": "1"}}})
    assert cfg.mqtt.labels == {"site": "berlin-2", "hw": "orin_nx.16", "ring": "1"}


@pytest.mark.parametrize("labels, named", [
    ({"si te": "a"}, "label key 'si te'"),
    ({"site": "a=b"}, "label 'site''s value 'a=b'"),
    ({"site": ""}, "label 'site''s value ''"),
    ({"x" * 65: "a"}, "label key"),
    ({"site": "a/b"}, "label 'site''s value 'a/b'"),
])
def test_labels_that_a_selector_could_not_name_are_refused(labels, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"mqtt": {"labels": labels}})
    assert "mqtt.labels" in e.value.message and named in e.value.message
