"""Tyk's shared secret: from `$TOKENTRAIL_SHARED_SECRET` or a file, never from the command line (which any
user of the machine can read in the process list)."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_ENV = "TOKENTRAIL_SHARED_SECRET"


class SecretError(Exception):
    pass


def load_secret(path: Path | None = None) -> str:
    if path is not None:
        try:
            secret = Path(path).read_text().strip()
        except OSError as e:
            raise SecretError(f"cannot read the secret file {path}: {e.strerror or e}") from e
        if not secret:
            raise SecretError(f"the secret file {path} is empty")
        return secret
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise SecretError("no shared secret: the receiver refuses to run without one")
    return secret
