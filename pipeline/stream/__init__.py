"""The Faust shell: one app, one module per stage, each calling one pure core function
per Kafka record (records are batches: OTLP requests in, NDJSON batches out)."""
