"""Live mode: a Tyk-compatible receiver (and relay) that spools deliveries for the store's single writer."""

import ingest  # noqa: F401 - before any module here loads duckdb: sets how DuckDB's allocator treats freed memory
