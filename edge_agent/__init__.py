"""edge-agent: an ONNX Runtime inference daemon for edge AI units.

Layers: transports -> serving -> cache, ota, runtime -> config, errors, types;
ops is used from every layer, and nothing imports a layer above its own
(docs/ARCHITECTURE.md draws a request's way through them).

What lives here:
  transports/     HTTP (Unix socket, optional TCP) and MQTT in front of the service
  serving/        the transport-independent core: admission, routing, batching, codec
  cache/          the response cache the service asks before running a model
  runtime/        one model version in an ONNX Runtime session; providers; text models
  ota/            over-the-air model updates, and the registry side that publishes them
  quantize/       INT8 / FP16 quantization behind an accuracy gate
  vision/         images: decoding with limits, declared pre-processing, the OCR pipeline's ops
  pipeline/       several graphs of one version served as one model (model.yaml pipeline:)
  fleet/          `edge-agent fleet`: rollouts over many units in waves, from the broker's side
  ops/            the daemon's footing on its host: logs, metrics, systemd, the doctor
  daemon.py       the daemon's lifecycle: start-up, main loop, ordered shutdown, SIGHUP
  cli.py          the `edge-agent` command line
  client.py       a small stdlib client for the daemon's socket or TCP listener
  config/         the typed, validated configuration and the rules between its keys
  yaml_lines.py   YAML with each key's line; validation errors naming file, line and key
  credentials.py  where a secret named in the config is found (systemd credential, /etc)
  errors.py       EdgeError and its stable codes
  types.py        InferRequest / InferResponse, what every transport decodes into
  atomic.py       power-cut-safe file writes
  backoff.py      the one retry-delay formula (exponential, equal jitter)
  breaker.py      the circuit breaker for calls to another host (offload to companions)
  compat.py       what Python 3.10+ gives and the units' Python 3.8 lacks
  digests.py      file digests of model files, artifacts and lineage
"""

__version__ = "0.1.0"
