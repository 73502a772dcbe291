"""Errors of the update path, each with a stable ``code`` (wire contract).

They are reported in the updater's persisted state (``reason``), on the
retained MQTT state topic and in ``edge_agent_ota_rejections_total{code}``.
"""

from __future__ import annotations

from ..errors import EdgeError


class OtaError(EdgeError):
    """An update step failed (the specific subclasses below say how)."""

    code = "ota_failed"
    http_status = 500
    # Permanent errors are not retried: the same registry gives the same bytes.
    retryable = False


class ManifestInvalid(OtaError):
    """manifest.json or index.json does not parse or breaks the schema."""

    code = "manifest_invalid"


class KeyInvalid(OtaError):
    """A key file is missing, unreadable or not an Ed25519 PEM key."""

    code = "key_invalid"


class SignatureInvalid(OtaError):
    """The detached signature does not verify (tampered manifest or bad signature)."""

    code = "signature_invalid"


class SignatureUnknownKey(OtaError):
    """The manifest is signed by a key that is not pinned on this device."""

    code = "signature_unknown_key"


class ArtifactDigestMismatch(OtaError):
    """A downloaded artifact's sha256 differs from the signed manifest (tampered or corrupt)."""

    code = "artifact_digest_mismatch"


class ArtifactSizeMismatch(OtaError):
    """A downloaded artifact's size differs from the signed manifest."""

    code = "artifact_size_mismatch"


class IOSignatureMismatch(OtaError):
    """The new version's inputs/outputs differ from what is served (or from its model.yaml)."""

    code = "signature_mismatch"


class GoldenMismatch(OtaError):
    """The staged version does not reproduce the manifest's golden outputs."""

    code = "golden_mismatch"


class GoldenRunnerMissing(OtaError):
    """A text model needs the daemon's text pipeline to compute/check golden outputs."""

    code = "golden_runner_missing"


class AgentTooOld(OtaError):
    """The manifest needs a newer edge-agent than this one."""

    code = "agent_too_old"


class UnknownChannel(OtaError):
    """The registry index has no such channel for the model."""

    code = "unknown_channel"
    http_status = 404


class DownloadFailed(OtaError):
    """Transport failure (connection, timeout, HTTP status) after all attempts."""

    code = "download_failed"
    retryable = True


class PublishError(OtaError):
    """`edge-agent registry publish` cannot publish the version directory."""

    code = "publish_failed"
    http_status = 400


class RetriesExhausted(OtaError):
    """The loop counter: a state was entered (retry or crash-resume) too often."""

    code = "retries_exhausted"


class InvalidTransition(OtaError):
    """An event that the transition table does not allow in the current state; or an operator's
    load/unload of a model the OTA updater manages that conflicts with it (unloading its active or
    previous version or an update's target, loading a version it refuses)."""

    code = "invalid_transition"
    http_status = 409
