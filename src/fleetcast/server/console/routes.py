"""Console pages (sign-in, set-up, dashboard, deploy wizard, deployments, images, users) and the
users API (``/api/users``, admin role). Pages carry no data: console.js reads it from the REST API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field

from fleetcast import __version__
from fleetcast.errors import FleetcastError, ServerError
from fleetcast.server.auth import ForbiddenError, same
from fleetcast.server.db import AuditRow
from fleetcast.server.events import EVENT_TYPES
from fleetcast.server.images import ImageCatalog, check_name
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.server.sessions import (
    COOKIE,
    Principal,
    Sessions,
    check_same_site,
    principal,
    session_principal,
)
from fleetcast.server.users import SlowDown, Users

logger = logging.getLogger(__name__)

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
MAX_FORM = 16 * 1024

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["console"])


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(
        version=__version__, event_types=" ".join(EVENT_TYPES), **context
    )
    return HTMLResponse(html, status_code=status, headers=_NO_STORE)


_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
}


async def form(request: Request) -> dict[str, str]:
    body = (await request.body())[:MAX_FORM].decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def users_of(request: Request) -> Users:
    users: Users = request.app.state.users
    return users


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def address_of(request: Request) -> str:
    return request.client.host if request.client else ""


def audit(
    request: Request, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    """One row of the audit log (``GET /api/audit``) with the user who did it."""
    orch: Orchestrator = request.app.state.orchestrator
    with orch.db.transaction() as s:
        s.add(AuditRow(actor=actor[:64], address=address_of(request)[:64], action=action,
                       target=target[:255], detail=detail or {}))  # fmt: skip


def signed_in(request: Request, token: str) -> RedirectResponse:
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(sessions_of(request).lifetime.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


# -- sign-in ------------------------------------------------------------------------------------


@pages.get("/setup")
def setup_page(request: Request) -> Response:
    if not users_of(request).needs_setup():
        return RedirectResponse("/signin", status_code=303)
    return render("setup.html", errors={})


@pages.post("/setup")
async def setup(request: Request) -> Response:
    check_same_site(request)
    users = users_of(request)
    if not users.needs_setup():
        return RedirectResponse("/signin", status_code=303)
    f = await form(request)
    password, again = f.get("password", ""), f.get("password2", "")
    if password != again:
        return render("setup.html", 400, errors={"password2": "The two passwords are not the same."})
    try:
        users.add("admin", "admin", password, only_if_none=True)
    except FleetcastError as exc:
        return render("setup.html", 400, errors={"password": exc.message + "."})
    token, _ = sessions_of(request).create("admin")
    logger.info("console: admin password set from %s", address_of(request))
    audit(request, "admin", "console-setup", "user admin")
    return signed_in(request, token)


@pages.get("/signin")
def signin_page(request: Request, expired: bool = False) -> Response:
    if users_of(request).needs_setup():
        return RedirectResponse("/setup", status_code=303)
    note = "Your session has ended. Sign in again." if expired else ""
    return render("signin.html", errors={}, name="", note=note)


@pages.post("/signin")
async def signin(request: Request) -> Response:
    check_same_site(request)
    f = await form(request)
    name = f.get("name", "").strip()
    try:
        users_of(request).sign_in(name, f.get("password", ""), address_of(request))
    except SlowDown as exc:
        return render("signin.html", 429, errors={"password": exc.message + "."}, name=name, note="")
    except FleetcastError as exc:
        logger.warning("console: failed sign-in for %r from %s", name, address_of(request))
        audit(request, "", "signin-failed", f"user {name[:64]!r}")
        return render("signin.html", 401, errors={"password": exc.message + "."}, name=name, note="")
    token, _ = sessions_of(request).create(name)
    audit(request, name, "signin", f"user {name}")
    return signed_in(request, token)


@pages.post("/signout")
async def signout(request: Request) -> Response:
    check_same_site(request)
    who = session_principal(request)
    f = await form(request)
    if who is not None:
        if not same(f.get("csrf", ""), who.csrf):
            raise ForbiddenError("the sign-out form has no valid CSRF token", hint="reload the page")
        sessions_of(request).end(request.cookies.get(COOKIE, ""))
        audit(request, who.name, "signout", f"user {who.name}")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- pages --------------------------------------------------------------------------------------


def page(request: Request, template: str, title: str, **context: Any) -> Response:
    if users_of(request).needs_setup():
        return RedirectResponse("/setup", status_code=303)
    who = session_principal(request)
    if who is None:
        expired = "?expired=1" if COOKIE in request.cookies else ""
        return RedirectResponse(f"/signin{expired}", status_code=303)
    return render(template, user=who, title=title, page=template.removesuffix(".html"), **context)


@pages.get("/")
def dashboard(request: Request) -> Response:
    return page(request, "dashboard.html", "Clients")


@pages.get("/deploy")
def deploy(request: Request) -> Response:
    return page(request, "deploy.html", "Deploy")


@pages.get("/deployments")
def deployments(request: Request) -> Response:
    return page(request, "deployments.html", "Deployments")


@pages.get("/deployments/{deployment_id}")
def deployment(request: Request, deployment_id: int) -> Response:
    return page(request, "deployment.html", f"Deployment {deployment_id}", deployment_id=deployment_id)


@pages.get("/images")
def images(request: Request) -> Response:
    return page(request, "images.html", "Images")


@pages.get("/users")
def users_page(request: Request) -> Response:
    return page(request, "users.html", "Users")


# -- users API ----------------------------------------------------------------------------------


def require_admin_role(request: Request) -> Principal:
    who = principal(request)
    if who.role != "admin":
        raise ForbiddenError(f"{who.name} is an {who.role}: only admins manage users")
    return who


Admin = Annotated[Principal, Depends(require_admin_role)]


class UserBody(BaseModel):
    name: str = Field(max_length=64)
    role: str = Field(max_length=16)
    password: str = Field(max_length=1024)


class UserOut(BaseModel):
    name: str
    role: str
    created_at: str | None


class UserList(BaseModel):
    users: list[UserOut]


class Me(BaseModel):
    name: str
    role: str
    can_change: bool


@api.get("/users", response_model=UserList)
def list_users(request: Request, _: Admin) -> dict[str, Any]:
    return {"users": users_of(request).list()}


@api.post("/users", status_code=201, response_model=UserOut)
def add_user(body: UserBody, request: Request, who: Admin) -> dict[str, Any]:
    user = users_of(request).add(body.name, body.role, body.password)
    audit(request, who.name, "user-add", f"user {user['name']}", {"role": user["role"]})
    return user


@api.get("/me", response_model=Me)
def me(request: Request) -> dict[str, Any]:
    who = principal(request)
    return {"name": who.name, "role": who.role, "can_change": who.can_change}


# -- images: verify and delete (what `fleetcast image verify` / `image rm` do, for the console) ----


class VerifyOut(BaseModel):
    image: str
    ok: bool
    chunks: int
    bytes: int
    problems: list[str]


class RemovedOut(BaseModel):
    removed: str


def _catalog(request: Request) -> ImageCatalog:
    cat: ImageCatalog = request.app.state.catalog
    return cat


class PartitionOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    number: int | None
    kind: str
    start: int
    size: int
    fstype: str
    os_hint: str | None
    used_bytes: int
    # what capture found on it, when recorded (Windows: product, edition, version, build, generalized,
    # machine_sid, computer_name; store.manifest.Area.os_info)
    os_info: dict[str, Any] | None = None


class ImageDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    image_id: str
    created: str | None
    disk_size: int
    logical_sector_size: int
    table_label: str | None
    os_hint: str | None
    used_bytes: int
    data_bytes: int
    stored_bytes: int
    unique_bytes: int | None
    packs: int
    partitions: list[PartitionOut]


@api.get("/images/{name}/details", response_model=ImageDetails, tags=["images"])
def image_details(name: str, request: Request) -> dict[str, Any]:
    """What `fleetcast image info --json` shows: partitions with filesystems and sizes, the OS found,
    stored bytes (every pack it references, once) and bytes unique to it (what `image rm` + `store gc`
    free)."""
    from fleetcast.store.images import summary

    principal(request)
    store = _catalog(request).store()
    m = store.open(check_name(name), lazy=True)
    details: dict[str, Any] = summary(m, store.usage().get(m.name))
    return details


@api.post("/images/{name}/verify", response_model=VerifyOut, tags=["images"])
def verify_image(name: str, request: Request) -> dict[str, Any]:
    """Re-hash every chunk the image uses (operators and admins; it reads the whole image)."""
    principal(request)
    report = _catalog(request).store().verify(check_name(name))
    result: dict[str, Any] = report.to_dict()
    return result


@api.delete("/images/{name}", response_model=RemovedOut, tags=["images"])
def delete_image(name: str, request: Request) -> dict[str, Any]:
    """Unpublish an image (its chunks go at the next `fleetcast store gc`); refused while a running
    deployment uses it."""
    who = principal(request)
    check_name(name)
    orch: Orchestrator = request.app.state.orchestrator
    for d in orch.deployments():
        if d["image"] == name and d["state"] in ("running", "cancelling"):
            raise ServerError(
                f"image {name!r} is used by deployment {d['deployment']}, which is still {d['state']}",
                hint=f"wait for it or cancel it: POST /api/deployments/{d['deployment']}/cancel",
            )
    _catalog(request).store().remove(name)
    audit(request, who.name, "image-delete", f"image {name}")
    return {"removed": name}
