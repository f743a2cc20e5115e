"""Ways in: OTLP/HTTP and OTLP/gRPC receivers and a Python SDK exporter, all landing raw
OTLP in ``otlp_spans`` with message content replaced by keyed hashes."""
