"""`/status` and `/status.json`: whether each part of this deployment answers (the
database, the vector store, the GPU provider) and the incident history operators post
with `auxen incident`.

The checks are cheap (a `SELECT 1`, listing the vector store's tables, the provider's
own list of resources), each bounded by AUXEN_STATUS_CHECK_TIMEOUT_S, and their result
is reused for a few seconds, so an anonymous page cannot be used to load the database
or the provider's API. A failing check says only which part and "unreachable" or
"timeout": never an error text that could carry a host name or a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.kb.store import load_lancedb
from auxen.runtime import Runtime
from auxen.store.models import as_utc
from auxen.tools.incidents import list_incidents
from auxen.web.pages import Pages

CACHE_S = 10.0


def _iso(ts: Any) -> str | None:
    return as_utc(ts).isoformat().replace("+00:00", "Z") if ts is not None else None


class StatusPage:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.rt: Runtime = pages.rt
        self._cached: tuple[float, list[dict[str, str]]] | None = None
        self._lock = asyncio.Lock()

    async def _check(self, name: str, probe: Callable[[], Awaitable[object]]) -> dict[str, str]:
        started = time.monotonic()
        try:
            await asyncio.wait_for(probe(), self.rt.settings.status_check_timeout_s)
            state, detail = "operational", "ok"
        except TimeoutError:
            state, detail = "down", "timeout"
        except Exception:
            state, detail = "down", "unreachable"
        took = f"{(time.monotonic() - started) * 1000:.0f} ms"
        return {"name": name, "status": state, "detail": detail, "latency": took}

    async def _vector_store(self) -> None:
        lancedb = await load_lancedb()  # imported before the probe's clock started
        db = await lancedb.connect_async(self.rt.settings.resolved_kb_uri)
        await db.table_names()

    async def components(self) -> list[dict[str, str]]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            # Importing LanceDB (seconds, once per process) is not the store's health:
            # done before the timed probes, or the first check after a start reads "down".
            with contextlib.suppress(Exception):
                await load_lancedb()
            checks = await asyncio.gather(
                self._check("database", self.rt.db.ping),
                self._check("vector store", self._vector_store),
                self._check(f"provider: {self.rt.provider.name}", self.rt.provider.list_owned),
            )
            self._cached = (time.monotonic(), list(checks))
            return self._cached[1]

    async def report(self) -> dict[str, Any]:
        components = await self.components()
        try:
            incidents = await list_incidents(self.rt.db)
        except Exception:
            incidents = []  # the database check above already says it is down
        open_incidents = [i for i in incidents if i.incident.status != "resolved"]
        healthy = all(c["status"] == "operational" for c in components)
        overall = "operational" if healthy and not open_incidents else "degraded"
        if not healthy and any(c["name"] == "database" and c["status"] == "down"
                               for c in components):  # fmt: skip
            overall = "major_outage"
        return {
            "status": overall,
            "components": components,
            "incidents": [
                {
                    "id": i.incident.id,
                    "title": i.incident.title,
                    "severity": i.incident.severity,
                    "status": i.incident.status,
                    "created_at": _iso(i.incident.created_at),
                    "updated_at": _iso(i.incident.updated_at),
                    "resolved_at": _iso(i.incident.resolved_at),
                    "updates": [
                        {"status": u.status, "message": u.message, "created_at": _iso(u.created_at)}
                        for u in i.updates
                    ],
                }
                for i in incidents
            ],
        }

    async def json(self, request: Request) -> Response:
        return JSONResponse(await self.report(), headers={"Cache-Control": "no-store"})

    async def page(self, request: Request) -> Response:
        report = await self.report()
        return self.pages.render(request, "status.html", report=report)
