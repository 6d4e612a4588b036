"""tokentrail's engine: read log exports, normalise and fingerprint them, store them, rebuild token lineage.

Importing this package first makes DuckDB overwrite the memory it frees. DuckDB keeps its memory in an allocator
of its own (a jemalloc) that hands freed bytes out again as they are, and when its buffer pool is full it writes
whole blocks to `<db>.tmp`, unused bytes included: bytes that may have held a token a moment earlier (its JSON
parser and the normalising statement read every raw token). A 5M-line ingest with the default 1 GB limit left
101,491 raw tokens in those files; with freed memory overwritten, none (`tests/test_security.py` checks a
smaller one).
jemalloc reads its options once, when DuckDB is loaded: this runs before any module here (or in `live`, whose
`__init__` imports this package) imports duckdb.
"""

from __future__ import annotations

import os
import sys

_ALLOCATOR_OPTIONS = "DUCKDB_JE_MALLOC_CONF"  # the environment variable of DuckDB's (prefixed) jemalloc

if "duckdb" not in sys.modules:  # loaded already (by the embedding program): too late, and not ours to change
    _conf = os.environ.get(_ALLOCATOR_OPTIONS, "")
    if "junk" not in _conf:
        os.environ[_ALLOCATOR_OPTIONS] = f"{_conf},junk:free" if _conf else "junk:free"
