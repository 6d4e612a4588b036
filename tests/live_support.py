"""Running the real receiver (`tokentrail receive`, a subprocess on a free loopback port) and a stand-in for the
user's own service (an upstream that answers 200, 500, slowly, or not at all), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.browser_support import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "tyk-shared-secret-for-tests"
TYK_HEADERS = {"Content-Type": "application/json", "User-Agent": "Tyk-Gatewy-Notifications",
               "X-Tyk-Shared-Secret": SECRET}


@dataclass
class Receiver:
    url: str
    proc: subprocess.Popen
    log: Path

    def post(self, body: bytes | dict, *, secret: str | None = SECRET, path: str = "/", **kw) -> httpx.Response:
        headers = dict(TYK_HEADERS)
        if secret is None:
            headers.pop("X-Tyk-Shared-Secret")
        else:
            headers["X-Tyk-Shared-Secret"] = secret
        content = json.dumps(body).encode() if isinstance(body, dict) else body
        return httpx.post(self.url + path, content=content, headers=headers, timeout=15, **kw)

    def metrics(self) -> dict[str, float]:
        """The scrape as {'name{labels}': value} (comments dropped)."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def receiver(db: Path, *args: str, secret: str | None = SECRET, timeout: float = 30) -> Iterator[Receiver]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TOKENTRAIL_SHARED_SECRET"}
    if secret is not None:
        env["TOKENTRAIL_SHARED_SECRET"] = secret
    log = db.parent / f"receiver-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokentrail", "receive", "--db", str(db), "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    rec = Receiver(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the receiver exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(rec.url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield rec
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Upstream:
    """The user's existing service: answers each POST with the next status of `script` (then `default`);
    a status of -1 means: hold the connection for `hold` seconds, then 200 (a timeout for the relay)."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    hold: float = 3.0
    received: list[tuple[object, bytes]] = field(default_factory=list)
    url: str = ""

    def start(self) -> Upstream:
        up = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                up.received.append((self.headers, body))  # case-insensitive, like HTTP
                status = up.script.pop(0) if up.script else up.default
                if status == -1:
                    time.sleep(up.hold)
                    status = 200
                payload = b"upstream says %d" % status
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/notify"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def notification(i: int, *, kind: str = "refresh", tag: str = "n") -> dict:
    """A Tyk body with tokens unique to (tag, i); refreshes chain on i - 1."""
    return {
        "auth_code": f"code-{tag}-{i:06d}-abcdefghij" if kind == "new" else "",
        "new_oauth_token": f"access-{tag}-{i:06d}-abcdefghijklmnopqrstuvwxyz",
        "refresh_token": f"refresh-{tag}-{i:06d}-abcdefghijklmnop",
        "old_refresh_token": f"refresh-{tag}-{i - 1:06d}-abcdefghijklmnop" if kind == "refresh" else "",
        "notification_type": kind,
    }
