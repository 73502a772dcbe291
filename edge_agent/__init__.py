"""edge-agent: an ONNX Runtime inference daemon for edge AI units."""

__version__ = "0.1.0"
