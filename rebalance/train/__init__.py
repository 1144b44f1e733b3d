"""The bundled trainer: long-tail losses, a linear / MLP head on features, per-bucket metrics."""
