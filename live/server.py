"""The receiver: an ASGI app (Starlette, served by uvicorn) that Tyk posts its OAuth notifications to.

* `POST /` and `POST /tyk/notify`: check `X-Tyk-Shared-Secret` (constant time; 401 and nothing recorded on a
  mismatch), cap the body (413), record the delivery durably (`live.recorder`: fingerprints only, fsync'd),
  then answer. 200 only once it is on disk, because Tyk treats anything else as a failure and retries 10 s
  later (3 attempts in all); 400 for a body that is not a notification (it is kept in the quarantine, with the
  reason); 503 when it could not be recorded (so Tyk retries).
* relay mode (`forward`): the delivery goes on to the user's own service with the same headers and body, and
  Tyk gets that service's status (so Tyk's retries still protect it); tokentrail records the delivery either
  way, with the status the service gave (0: no answer). A timeout answers 504, an unreachable service 502.
* `GET /metrics` (Prometheus) and `GET /healthz` (liveness). Anything else: 404, or 405 for a wrong method.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from live.metrics import ReceiverMetrics
from live.recorder import Recorder

log = logging.getLogger("tokentrail.receiver")

NOTIFY_PATHS = ("/", "/tyk/notify")
DEFAULT_MAX_BODY = 64 * 1024  # Tyk's bodies are ~300 bytes
DEFAULT_FORWARD_TIMEOUT = 8.0  # under Tyk's own 10 s timeout, so Tyk sees our answer, not its timeout
# Not passed on to the user's service: they describe this hop, not the delivery.
_HOP_BY_HOP = frozenset(
    ("host", "content-length", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
     "trailer", "upgrade", "proxy-authorization", "proxy-authenticate")
)


@dataclass
class ReceiverSettings:
    spool: Path
    key: str  # the store's fingerprint key
    secret: str  # Tyk's notifications.shared_secret
    forward: str | None = None
    forward_timeout: float = DEFAULT_FORWARD_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    segment_bytes: int | None = None
    report_every: float = 60.0  # seconds between one-line activity reports in the log (0: none)


class _TooLarge(Exception):
    pass


def create_app(settings: ReceiverSettings, recorder: Recorder | None = None) -> Starlette:
    """The receiver app. `recorder`: one made beforehand (the CLI makes it first, so that a spool another
    receiver holds is a clear error before the server starts); else the app makes its own at startup."""
    if not settings.secret:
        raise ValueError("a shared secret is required")
    secret = settings.secret.encode()
    state: dict = {}

    metrics = ReceiverMetrics(settings.spool)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["recorder"] = recorder or Recorder(settings.spool, settings.key, segment_bytes=settings.segment_bytes)
        if settings.forward:
            # aiohttp's client: with httpx's async client relay mode was CPU-bound at ~430 deliveries/s on
            # 2 cores; with this one it sustains 2,000/s (bench/receiver.py --relay)
            state["client"] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.forward_timeout),
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            )
        reporter = asyncio.create_task(_report()) if settings.report_every > 0 else None
        try:
            yield
        finally:
            if reporter is not None:
                reporter.cancel()
            if "client" in state:
                await state["client"].close()
            state.pop("recorder").close()

    async def _report() -> None:
        """A line in the log every `report_every` seconds when something happened: what was answered, what
        waits in the spool. (Per-delivery access logs would cost more than the deliveries at 1,000/s.)"""
        last: dict[str, float] = {}
        while True:
            await asyncio.sleep(settings.report_every)
            counts = {s.labels["status"]: s.value for s in _samples(metrics.deliveries) if s.name.endswith("_total")}
            delta = {k: int(v - last.get(k, 0)) for k, v in counts.items() if v - last.get(k, 0)}
            last = counts
            if delta:
                answered = ", ".join(f"{k}: {v}" for k, v in sorted(delta.items()))
                lag = metrics.lag_now()
                log.info("last %gs: answered %s; spool lag %d deliveries", settings.report_every, answered, lag)

    async def notify(request: Request) -> Response:
        started = time.perf_counter()
        received_ns = time.time_ns()
        response = await _notify(request, received_ns)
        metrics.deliveries.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _notify(request: Request, received_ns: int) -> Response:
        given = request.headers.get("x-tyk-shared-secret", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, secret):
            return PlainTextResponse("missing or wrong X-Tyk-Shared-Secret\n", status_code=401)
        try:
            body = await _read_body(request, settings.max_body)
        except _TooLarge:
            return PlainTextResponse(f"body over {settings.max_body} bytes\n", status_code=413)

        upstream_status = None
        upstream: Response | None = None
        if settings.forward:
            upstream_status, upstream = await _relay(request, body)

        try:
            receipt = await state["recorder"].record(body, received_ns, upstream_status)
        except Exception:  # the recorder has logged why (masked); Tyk retries a 503
            return PlainTextResponse("could not record the delivery; retry\n", status_code=503)
        metrics.recorded.inc()
        if receipt.duplicate:
            metrics.duplicates.inc()
        if receipt.reason:
            metrics.rejected.inc()
        if upstream is not None:
            return upstream
        if receipt.reason:
            return PlainTextResponse(f"not a Tyk notification: {receipt.reason}\n", status_code=400)
        return PlainTextResponse("ok\n")

    async def _relay(request: Request, body: bytes) -> tuple[int, Response]:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        t0 = time.perf_counter()
        try:
            async with state["client"].post(settings.forward, data=body, headers=headers, allow_redirects=False) as r:
                status, content = r.status, await r.content.read(4096)
                media = r.headers.get("content-type")
        except TimeoutError:
            metrics.relay_failures.labels("timeout").inc()
            return 0, PlainTextResponse("the forwarded service did not answer in time\n", status_code=504)
        except aiohttp.ClientError as e:
            metrics.relay_failures.labels("unreachable").inc()
            log.warning("relay to %s failed: %s", settings.forward, e)
            return 0, PlainTextResponse("the forwarded service is unreachable\n", status_code=502)
        finally:
            metrics.relay_latency.observe(time.perf_counter() - t0)
        if status != 200:
            metrics.relay_failures.labels("status").inc()
        return status, Response(content, status_code=status, media_type=media)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        rec: Recorder | None = state.get("recorder")
        ok = rec is not None and rec.alive()
        body = {"status": "ok" if ok else "recorder stopped", "recorded": rec.recorded if rec else 0}
        return JSONResponse(body, status_code=200 if ok else 503)

    routes = [Route(p, notify, methods=["POST"]) for p in NOTIFY_PATHS]
    routes += [Route("/metrics", metrics_endpoint, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _samples(metric):
    for family in metric.collect():
        yield from family.samples


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)
