"""Every MQTT topic name and topic parser of edge-agent: the one place a topic string is built.

A newcomer adding a topic adds it here (and to docs/MQTT.md's topic table); the
transport, the companion, the CLI client, offloading and the reply-topic rule all
take their names from here, so a name cannot drift between the side that
publishes and the side that subscribes. Names are built once per transport
(``DeviceTopics``), never per message.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from ...compat import slotted_dataclass

OFFLOAD_REPLIES = "offload-replies"
# The last level of an infer topic that marks the payload as an encoded image, for MQTT 3.1.1
# clients, which have no content type: ``.../infer/{model}[/{version}]/jpeg``. MQTT 5 clients may
# set the content type (image/jpeg, image/png) instead. A version cannot be named like these.
IMAGE_SUFFIXES = frozenset({"jpeg", "jpg", "png", "image"})


def model_path(model: str, version: Optional[str]) -> str:
    """``{model}`` or ``{model}/{version}``: the tail of an infer or offload topic."""
    return model + ("/" + version if version else "")


def infer_topic(prefix: str, device: str, model: str, version: Optional[str] = None) -> str:
    """Where a client sends a request to one unit."""
    return f"{prefix}/{device}/infer/" + model_path(model, version)


def infer_image_topic(prefix: str, device: str, model: str, version: Optional[str], fmt: str) -> str:
    """Where a 3.1.1 client sends an encoded image (``fmt``: one of IMAGE_SUFFIXES)."""
    return infer_topic(prefix, device, model, version) + "/" + fmt


def split_image_suffix(rest: str) -> Tuple[str, bool]:
    """``model[/version]/jpeg`` -> (``model[/version]``, True); any other tail as it is, False."""
    head, sep, last = rest.rpartition("/")
    if sep and last in IMAGE_SUFFIXES:
        return head, True
    return rest, False


def client_reply_topic(prefix: str, client_id: str) -> str:
    """The CLI client's default reply topic (inside the default reply_topics rule)."""
    return f"{prefix}/clients/{client_id}/replies"


def offload_prefix(prefix: str) -> str:
    """Topics companions take offloaded requests on: ``{prefix}/offload/`` (``offload/`` for an empty prefix)."""
    return f"{prefix}/offload/" if prefix else "offload/"


def offload_topic(prefix: str, model: str, version: Optional[str]) -> str:
    """Where an edge unit sends one offloaded request."""
    return offload_prefix(prefix) + model_path(model, version)


def offload_filters(group: str, prefix_: str, model: str) -> List[str]:
    """A companion's shared subscriptions for one model (``prefix_`` from offload_prefix)."""
    base = f"$share/{group}/{prefix_}{model}"
    return [base, base + "/+"]


def offload_replies_filter(prefix: str) -> str:
    """Every edge unit's offload-replies topic: answers a companion may publish to."""
    return f"{prefix}/+/{OFFLOAD_REPLIES}"


def protected_filters(prefix: str, device: str, offload_prefix_: Optional[str]) -> List[str]:
    """Topics answers never go to: the daemon's own, every unit's request/command/state
    topics, the fleet's and the offload topics (reply_topics.py refuses them)."""
    deny = [
        f"{prefix}/{device}/#",  # the daemon's own topics
        "fleet/#",
        f"{prefix}/+/infer/#",
        f"{prefix}/+/ota/#",
        f"{prefix}/+/status/#",
        f"{prefix}/+/telemetry/#",
        "offload/#",
    ]
    if offload_prefix_:
        deny.append(offload_prefix_.strip("/") + "/#")
    return deny


def split_model_path(rest: str) -> Optional[Tuple[str, Optional[str]]]:
    """``model[/version]`` after an infer or offload prefix; None when it is not that shape."""
    parts = rest.split("/")
    n = len(parts)
    if n == 1 and parts[0]:
        return parts[0], None
    if n == 2 and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


@slotted_dataclass
class DeviceTopics:
    """The topics of one unit, built once from ``mqtt.prefix``, the device id and ``mqtt.group``."""

    base: str
    infer_prefix: str
    status: str
    telemetry: str
    ota: str
    ota_state: str
    fleet_ota: str
    responses: str  # the default response topic
    offload_replies: str

    @classmethod
    def build(cls, prefix: str, device: str, group: str, default_response_topic: Optional[str] = None) -> DeviceTopics:
        base = f"{prefix}/{device}"
        return cls(
            base=base, infer_prefix=base + "/infer/", status=base + "/status", telemetry=base + "/telemetry",
            ota=base + "/ota", ota_state=base + "/ota/state", fleet_ota=f"fleet/{group}/ota",
            responses=default_response_topic or base + "/responses", offload_replies=f"{base}/{OFFLOAD_REPLIES}",
        )

    def subscriptions(self, qos: int) -> List[Tuple[str, int]]:
        """What the transport subscribes to on every connection."""
        return [(self.infer_prefix + "#", qos), (self.ota, qos), (self.fleet_ota, qos)]


# -- the fleet controller's side (edge_agent/fleet/) ---------------------------------------


def unit_ota_topic(prefix: str, device: str) -> str:
    """One unit's OTA command topic: what a rollout commands (never the group-wide one)."""
    return f"{prefix}/{device}/ota"


def status_filter(prefix: str) -> str:
    """Every unit's retained status (online / offline by the Last Will)."""
    return f"{prefix}/+/status"


def ota_state_filter(prefix: str) -> str:
    """Every unit's retained OTA state."""
    return f"{prefix}/+/ota/state"


def ota_command_filter(prefix: str) -> str:
    """Every unit's OTA command topic (what a broker-side audit counts)."""
    return f"{prefix}/+/ota"


def unit_of(prefix: str, topic: str, tail: str) -> Optional[str]:
    """The device of ``{prefix}/{device}/{tail}``; None for any other topic."""
    head, end = prefix + "/", "/" + tail
    if not (topic.startswith(head) and topic.endswith(end)):
        return None
    device = topic[len(head): len(topic) - len(end)]
    return device if device and "/" not in device else None


def rollout_topic(group: str, rollout_id: str) -> str:
    """The retained rollout record: any operator sees progress and who holds the lease."""
    return f"fleet/{group}/rollouts/{rollout_id}"


def rollouts_filter(group: str) -> str:
    """Every retained rollout record of a group."""
    return f"fleet/{group}/rollouts/+"


def rollout_control_topic(group: str, rollout_id: str) -> str:
    """Where `fleet pause|resume|abort` ask the controller holding the lease (retained until it answers)."""
    return f"fleet/{group}/rollouts/{rollout_id}/control"
