"""``pgjobs bench pages``: the dashboard's server time on a big table.

The table is filled as ``scale`` fills it (finished jobs, then available ones), with a dead set
of discarded jobs (a hundredth of the finished), scheduled jobs and an hour of run counts; then
every page is requested ``samples`` times from the dashboard's ASGI app in this process, so that
what is timed is the server's work (its statements and rendering), not a network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .._connection import connect
from .._errors import ConfigError
from .._settings import Settings
from ._jobs import SCHEMA, app
from ._sql import bench_queries_for

BENCH = bench_queries_for(SCHEMA)

PAGES = (
    "/",
    "/live",
    "/queues",
    "/jobs?state=available",
    "{next_available}",
    "/jobs?state=scheduled",
    "/jobs?state=completed",
    "/jobs?state=discarded",
    "/jobs?state=discarded&search=no-such-argument",
    "/jobs?state=available&queue=default&name=pgjobs.bench.noop",
    "/jobs/{discarded_id}",
    "/workers",
    "/cron",
    "/batches",
    "/metrics",
)
"""What is timed; ``{…}`` are filled from the table (the second page of available jobs, a
discarded job)."""


def pages(
    settings: Settings,
    available: int,
    finished: int,
    samples: int,
    fill: Callable[[Settings, int, int], None],
) -> dict[str, Any]:
    try:
        from ..web import dashboard
    except ImportError:
        raise ConfigError("bench pages needs the dashboard: pip install 'pgjobs[web]'") from None
    started = time.perf_counter()
    fill(settings, available, finished)
    with connect(settings, "pgjobs-bench") as conn:
        conn.execute(BENCH.bench_fill_discarded, {"rows": max(1, finished // 100)})
        conn.execute(BENCH.bench_fill_scheduled, {"rows": 10_000})
        conn.execute(BENCH.bench_fill_job_stats)
        conn.execute(BENCH.bench_vacuum_analyze)
        row = conn.execute(
            f"SELECT max(id) FROM {SCHEMA}.jobs WHERE state = 'discarded'"
        ).fetchone()
    discarded_id = row[0] if row else 0
    figures: dict[str, Any] = {
        "available_jobs": available,
        "finished_jobs": finished,
        "discarded_jobs": max(1, finished // 100),
        "fill_seconds": round(time.perf_counter() - started, 3),
        "samples": samples,
    }
    timings = asyncio.run(_time_pages(dashboard(app), discarded_id, samples))
    for page, times in timings.items():
        ordered = sorted(times)
        figures[f"{page} p50_ms"] = round(ordered[len(ordered) // 2], 1)
        figures[f"{page} max_ms"] = round(ordered[-1], 1)
    figures["slowest_page_max_ms"] = round(max(max(times) for times in timings.values()), 1)
    return figures


async def _time_pages(asgi: Any, discarded_id: int, samples: int) -> dict[str, list[float]]:
    try:
        status, body = await _get(asgi, "/jobs?state=available")
        marker = 'rel="next" href="'
        start = body.index(marker) + len(marker)
        next_available = body[start : body.index('"', start)].replace("&amp;", "&")
        next_available = next_available[next_available.index("/jobs") :]
        timings: dict[str, list[float]] = {}
        for template in PAGES:
            path = template.format(next_available=next_available, discarded_id=discarded_id)
            label = "/jobs?state=available (page 2)" if template == "{next_available}" else path
            label = label.replace(str(discarded_id), "<id>")
            times = timings.setdefault(label, [])
            await _get(asgi, path)  # warm: the pool's connection, the template's compilation
            for _ in range(samples):
                began = time.perf_counter()
                status, _ = await _get(asgi, path)
                times.append((time.perf_counter() - began) * 1000)
                if status != 200:
                    raise RuntimeError(f"bench pages: {path} answered {status}")
        return timings
    finally:
        await app.aclose()


async def _get(asgi: Any, target: str) -> tuple[int, str]:
    """One GET through the ASGI app: its status and body."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()
