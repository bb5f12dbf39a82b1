"""The FastAPI application factory: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from fleetcast import __version__
from fleetcast.errors import UsageError
from fleetcast.server import (
    api_admin,
    api_agent,
    apidocs,
    capture,
    console,
    fastlane,
    multicast,
    personalize,
    problems,
)
from fleetcast.server.auth import Tokens
from fleetcast.server.db import Database, redact
from fleetcast.server.enrollment import EnrollQueue
from fleetcast.server.events import EventBus
from fleetcast.server.fastlane import FastLane
from fleetcast.server.images import ImageCatalog
from fleetcast.server.limits import BodyLimit
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.server.pgfanout import PgFanout
from fleetcast.server.settings import ServerSettings
from fleetcast.server.sidaudit import router as sidaudit_router

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
PRESENCE_SECONDS = 0.5
REPORT_ROUNDS = 120  # a line a minute
# last_seen noted in memory is written every 2.5 s: one row per client seen, however often it beat
# (every second it was 1,000 single-row updates a second at 2,000 agents, 12 % of the server's CPU);
# client views and the stale sweep read the notes not yet written
FLUSH_ROUNDS = 5
# the GIL is handed over after 1 ms instead of 5: a worker thread's query (a console page, the sweep)
# waited up to 5 ms at every one of its SQLite calls for the event loop busy with heartbeats
SWITCH_INTERVAL = 0.001


async def _sweeper(orch: Orchestrator, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(orch.sweep)
        except Exception:  # keep sweeping; the next round may work (e.g. database restarted)
            logger.exception("stale-heartbeat sweep failed")


async def _presence(orch: Orchestrator) -> None:
    """Heartbeats noted in memory are written every 2.5 s; the busy set is re-read twice a second
    and the credentials when due (server/presence.py), so idle heartbeats keep their fast path."""
    rounds = 0
    loop = asyncio.get_running_loop()
    while True:
        woke = loop.time() + PRESENCE_SECONDS
        await asyncio.sleep(PRESENCE_SECONDS)
        orch.pacing.note_lag(loop.time() - woke)  # late: more heartbeats than CPU (server/pacing.py)
        rounds += 1
        try:
            await asyncio.to_thread(orch.presence.refresh)
            if rounds % FLUSH_ROUNDS == 0:
                await asyncio.to_thread(orch.presence.flush)
            if rounds % 2 == 0:
                await asyncio.to_thread(orch.presence.refresh_credentials)
            if rounds % REPORT_ROUNDS == 0 and (orch.presence.counts["fast"] or orch.presence.counts["full"]):
                counts, orch.presence.counts = orch.presence.counts, {"fast": 0, "full": 0}
                logger.info(
                    "heartbeats in the last %.0f s: %d from memory, %d on the full path; interval told "
                    "%.1f s (load factor %.2f)", REPORT_ROUNDS * PRESENCE_SECONDS, counts["fast"],
                    counts["full"], orch.pacing.interval(), orch.pacing.load_factor,
                )  # fmt: skip
        except Exception:  # the next round may work (e.g. database restarted)
            logger.exception("presence refresh or flush failed")


class FleetcastApp(FastAPI):
    """FastAPI, with ``POST /api/agent/heartbeat`` handed to the fast lane (server/fastlane.py) before
    any of the framework's layers: as the outermost middleware it still ran under FastAPI's own
    wrappers (telemetry, body limit, error middleware, Starlette's call), a fifth of the server's CPU
    per idle heartbeat at 2,000 agents (py-spy, bench/load.py). What the lane does not answer goes
    through the whole application as before."""

    fastlane: FastLane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == fastlane.PATH:
            scope["app"] = self
            await self.fastlane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: ServerSettings, *, catalog: ImageCatalog | None = None) -> FastAPI:
    """The server for ``settings``: database opened and schema created, tokens made if missing."""
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)  # the database and the store hold golden disks and secrets
    except OSError as exc:
        raise UsageError(
            f"cannot create the data directory {settings.data_dir}: {exc.strerror}",
            hint="run as root or pick a writable --data directory",
        ) from exc
    tokens = Tokens(settings.secrets_dir)
    db = Database(settings.db_url)
    if not settings.database_url:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{settings.data_dir / 'fleetcast.db'}{suffix}", 0o600)
    bus = EventBus()
    cat = catalog or ImageCatalog(settings.store)
    orch = Orchestrator(db, bus, cat, settings)
    if db.engine.dialect.name == "postgresql":  # other servers may share it: LISTEN/NOTIFY

        def delivered(event: dict[str, Any]) -> None:  # another server's event
            orch.presence.wake_for_event(event)  # a client it queued may be held here (long poll)
            bus.publish(event)

        bus.fanout = PgFanout(db.engine, delivered)
    orch.on_start()
    sweep_every = min(SWEEP_SECONDS, settings.stale_after / 2, settings.task_timeout / 2)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        tasks = [asyncio.create_task(_sweeper(orch, sweep_every)), asyncio.create_task(_presence(orch))]
        if bus.fanout is not None:
            bus.fanout.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.to_thread(orch.presence.flush)  # the last heartbeats' last_seen
            mcast.close()  # every udp-sender ends with the server
            captures = getattr(app.state, "captures", None)  # server/capture.py makes it on first use
            if captures is not None:  # partly received packs to part files: agents continue them later
                try:
                    await asyncio.to_thread(captures.stop)
                except Exception:  # the database and the other steps still close
                    logger.exception("captures: could not keep the partly received packs")
            if bus.fanout is not None:
                await asyncio.to_thread(bus.fanout.stop)
            db.close()

    app = FleetcastApp(
        title="fleetcast",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url=None,  # server/apidocs.py: the same page from the server's own files, not a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.db = db
    app.state.bus = bus
    app.state.catalog = cat
    app.state.orchestrator = orch
    app.state.enroll_queue = EnrollQueue(orch)  # enrollments in batches (server/enrollment.py)
    problems.install(app)
    app.add_middleware(BodyLimit)
    apidocs.install(app)
    app.fastlane = FastLane(functools.partial(FastAPI.__call__, app))  # before the framework (above)

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Unauthenticated liveness check (what scripts wait for after starting the server)."""
        return {"ok": True, "version": __version__}

    app.include_router(api_admin.router)
    app.include_router(api_agent.router)
    app.include_router(capture.admin_router)  # network capture (issue 11)
    app.include_router(capture.agent_router)
    app.include_router(personalize.router)  # personalize-only deployments (issue 13)
    app.include_router(sidaudit_router)  # GET /api/audit/sids (issue 13)
    mcast = multicast.install(app, orch, settings.data_dir)  # sessions + their routes (docs/multicast.md)
    from fleetcast.server import boot

    boot.install(app, db)  # network boot: /boot/*, registrations, lab reports (docs/boot-chain.md)
    console.install(app, db)  # the web console at / and /api/users (docs/console.md)
    logger.info(
        "server ready: data %s, store %s, database %s", settings.data_dir, settings.store, redact(db.url)
    )
    return app
