"""The web console: server-rendered pages (Jinja2) whose data comes from the public REST API,
read in the browser by ``static/console.js`` with the session cookie (docs/console.md)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fleetcast.server.db import Database
from fleetcast.server.sessions import Sessions
from fleetcast.server.users import Users

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI, db: Database) -> None:
    """Users and sessions on ``app.state``, the pages at ``/``, ``/api/users``, ``/api/drivers``,
    static files."""
    from fleetcast.server import drivers
    from fleetcast.server.console import routes

    app.state.users = Users(db)
    app.state.sessions = Sessions(db)
    app.include_router(drivers.admin_router)  # driver folders DATA/drivers/NAME (the wizard's Windows step)
    app.include_router(drivers.agent_router)
    app.include_router(routes.api)
    app.include_router(routes.pages)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
