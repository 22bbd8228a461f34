"""The batch capability's HTTP routes: /v1/files, /v1/batches, /v1/enrichment (thin: parse, call, serialize)."""
