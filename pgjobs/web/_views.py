"""The dashboard's pages: each reads what it shows in a few statements and renders a template."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .._admin import STATES
from ._counts import CAP
from ._graph import graph
from ._listing import ORDERS, SCAN, listing, page
from ._site import Site, path_job_id
from ._sql import COUNTED

UNFINISHED = ("scheduled", "available", "running", "retryable")


class Views:
    """The GET endpoints of one :class:`Site`."""

    def __init__(self, site: Site) -> None:
        self.site = site

    async def overview(self, request: Request) -> Response:
        await self.site.user(request)
        return await self.site.render(request, "overview.html", **await self._overview())

    async def live(self, request: Request) -> Response:
        """The overview's live part alone, which the page fetches every few seconds."""
        await self.site.user(request)
        overview = await self._overview()
        return await self.site.render(request, "_live.html", fragment=True, **overview)

    async def _overview(self) -> dict[str, Any]:
        site = self.site
        states, queues, alive, totals, minutes = await site.rows(
            (site.web.state_counts, {"cap": CAP}),
            (site.web.queues, {"cap": CAP}),
            (site.web.workers_alive, {}),
            (site.web.run_totals, {}),
            (site.web.runs_per_minute, {"minutes": 60}),
        )
        found = {row["state"]: row["jobs"] for row in states}
        waiting = found["scheduled"] + found["retryable"]  # counted together, up to the cap
        counts = {
            state: await site.count(
                CAP if state in ("scheduled", "retryable") and waiting >= CAP else found[state],
                state,
            )
            for state in COUNTED
        }
        now = datetime.now(UTC)
        return {
            "counts": counts,
            "runs": {row["outcome"]: row["runs"] for row in totals},
            "queues": await self._counted(queues),
            "workers": alive[0]["workers"],
            "slots": alive[0]["slots"],
            "graph": graph(((r["minute"], r["completed"], r["failed"]) for r in minutes), now),
            "now": now,
        }

    async def queues(self, request: Request) -> Response:
        await self.site.user(request)
        (rows,) = await self.site.rows((self.site.web.queues, {"cap": CAP}))
        return await self.site.render(request, "queues.html", queues=await self._counted(rows))

    async def _counted(self, queues: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The queues' rows with their available jobs as a :class:`Count`."""
        return [
            {**q, "available": await self.site.count(q["available"], "available", q["name"])}
            for q in queues
        ]

    async def jobs(self, request: Request) -> Response:
        await self.site.user(request)
        site = self.site
        asked = listing(request.query_params, searchable=site.options.redact is None)
        order = ORDERS[asked.state]
        statement = getattr(site.web, order.scan + ("_after" if asked.after else ""))
        (scanned,) = await site.rows((statement, asked.params()))
        found = page([tuple(row.values()) for row in scanned], asked)
        (rows,) = await site.rows((site.web.jobs_by_id, {"ids": found.ids}))
        by_id = {row["id"]: site.shown(row) for row in rows}
        jobs = [by_id[i] for i in found.ids if i in by_id]  # a job deleted meanwhile is gone
        return await site.render(
            request,
            "jobs.html",
            states=STATES,
            listing=asked,
            jobs=jobs,
            next=None if found.next is None else asked.query(found.next),
            scanned=found.scanned,
            scan=SCAN,
        )

    async def job(self, request: Request) -> Response:
        await self.site.user(request)
        job_id = path_job_id(request)
        app = self.site.app
        row = await app.get_job_async(job_id)
        if row is None:
            raise HTTPException(404, f"there is no job {job_id} (it may have been pruned)")
        batch = None if row.batch_id is None else await app.batch_status_async(row.batch_id)
        shown = self.site.shown(asdict(row))
        return await self.site.render(request, "job.html", job=shown, batch=batch)

    async def workers(self, request: Request) -> Response:
        await self.site.user(request)
        site = self.site
        workers, running = await site.rows(
            (site.app._queries.list_workers, {}), (site.web.running_jobs, {"limit": 1000})
        )
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for job in running:
            by_worker.setdefault(job["worker_id"], []).append(job)
        return await site.render(request, "workers.html", workers=workers, running=by_worker)

    async def cron(self, request: Request) -> Response:
        await self.site.user(request)
        entries = await self.site.app.list_cron_async()
        return await self.site.render(request, "cron.html", entries=entries)

    async def batches(self, request: Request) -> Response:
        await self.site.user(request)
        batches = await self.site.app.list_batches_async(limit=100)
        return await self.site.render(request, "batches.html", batches=batches)

    async def sign_in(self, request: Request) -> Response:
        return await self.site.render(request, "sign_in.html")
