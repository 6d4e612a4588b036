"""Where things live by default, and the environment variables that change it."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DB_ENV = "TOKENTRAIL_DB"


def default_db_path() -> Path:
    """`$TOKENTRAIL_DB`, else `data/tokentrail.duckdb` in the checkout (or in the current folder)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    root = PROJECT_ROOT if (PROJECT_ROOT / "app.py").exists() else Path.cwd()
    return root / "data" / "tokentrail.duckdb"


def demo_dir_for(db_path: Path) -> Path:
    return db_path.parent / "demo"
