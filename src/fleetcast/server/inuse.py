"""Images in use (issue 12 item 9): an image that a queued or running deployment reads is not removed,
and ``store gc`` keeps its packs.

Found: ``image rm`` and ``store gc`` during a running deployment succeeded, and the agent then
failed with a 404 after it had written a new partition table. The lease an image holds is the
deployment row itself -- a deployment that is ``running`` or ``cancelling`` and still has a queued
or running target reads its image -- so nothing can expire or leak: the lease ends when the last
target ends. Captures keep their own pack leases (``capture_leases``, server/capture.py); a capture
or personalize-only deployment reads no image.

- ``users(db, name)``: the deployments that read ``name`` (or every image's, ``name=None``);
- ``check_removable(db, name)``: raises ``ConflictError`` naming them, with the ``--force`` hint;
- ``release(orch, name, actor=...)``: ``--force`` -- cancel them first (queued targets at once,
  running ones are told to stop), returns their ids;
- ``protected_packs(db, store)``: what gc keeps -- every pack of every image in use (a repack
  must not rewrite what an agent is fetching) plus the capture leases.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fleetcast.errors import ConflictError, FleetcastError
from fleetcast.server.db import CaptureRow, Database, Deployment, PersonalizeRow, Target

if TYPE_CHECKING:
    from fleetcast.server.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

ACTIVE_DEPLOYMENT = ("running", "cancelling")
ACTIVE_TARGET = ("queued", "running")


@dataclass(frozen=True)
class Use:
    deployment_id: int
    image: str
    state: str


def users(db: Database, name: str | None = None) -> list[Use]:
    """The deployments that read an image now (of ``name``, or of any image), oldest first."""
    query = (
        select(Deployment.id, Deployment.image, Deployment.state)
        .where(Deployment.state.in_(ACTIVE_DEPLOYMENT))
        .where(
            Deployment.id.in_(select(Target.deployment_id).where(Target.state.in_(ACTIVE_TARGET))),
            Deployment.id.not_in(select(CaptureRow.deployment_id)),
            Deployment.id.not_in(select(PersonalizeRow.deployment_id)),
        )
        .order_by(Deployment.id)
    )
    if name is not None:
        query = query.where(Deployment.image == name)
    with db.sessions() as s:
        return [Use(row.id, row.image, row.state) for row in s.execute(query)]


def _named(uses: Iterable[Use]) -> str:
    items = [f"{u.deployment_id} ({u.state})" for u in uses]
    return ("deployment " if len(items) == 1 else "deployments ") + ", ".join(items)


def check_removable(db: Database, name: str) -> None:
    """ConflictError when a deployment still reads image ``name``."""
    found = users(db, name)
    if found:
        ids = " ".join(str(u.deployment_id) for u in found)
        raise ConflictError(
            f"image {name!r} is in use by {_named(found)}: its agents are still fetching it",
            hint=f"wait for it, or cancel it first: --force (or POST /api/deployments/{ids}/cancel)",
        )


def release(orch: Orchestrator, name: str, *, actor: str, address: str = "") -> list[int]:
    """Cancel every deployment that reads image ``name`` (``--force``); their ids."""
    cancelled: list[int] = []
    for use in users(orch.db, name):
        if use.state == "running":
            try:
                orch.cancel(use.deployment_id, actor=actor, address=address)
            except FleetcastError as exc:  # it finished meanwhile
                logger.info("deployment %d: %s", use.deployment_id, exc)
                continue
        cancelled.append(use.deployment_id)
        logger.warning("image %s: deployment %d cancelled so the image can go", name, use.deployment_id)
    return cancelled


def protected_packs(db: Database, store: Any) -> set[str]:
    """The packs ``store gc`` keeps: those of every image a deployment reads, and the capture leases.
    ``store`` is a ``fleetcast.store.images.ImageStore``."""
    from fleetcast.server.capture import leased_packs

    packs = set(leased_packs(db))
    for image in sorted({u.image for u in users(db)}):
        try:
            packs.update(store.open(image).pack_ids())
        except FleetcastError as exc:  # already gone: nothing of it to keep
            logger.warning("image %s is in use but cannot be read: %s", image, exc)
    return packs


def server_database(
    *, data: str | None, config_file: str | None, store: str | None, store_root: Path
) -> Database | None:
    """The database of the server whose store is ``store_root`` (``--data D``: ``D/store`` beside
    ``D/fleetcast.db``, or the configured database URL); None when the store is no server's."""
    from fleetcast.server import settings

    try:
        s = settings.build(data=data, listen=None, database=None, config_file=config_file, store=store)
    except FleetcastError:
        return None
    if s.store.resolve() != store_root.resolve():
        return None
    if not s.database_url and not (s.data_dir / "fleetcast.db").is_file():
        return None
    return Database(s.db_url)


def guard_remove(db: Database, store_root: Path, name: str, *, force: bool, actor: str) -> list[int]:
    """For ``fleetcast image rm NAME [--force]``: ConflictError while a deployment reads the image;
    with ``force``, those deployments are cancelled first (their ids are returned)."""
    if not force:
        check_removable(db, name)
        return []
    from fleetcast.server.events import EventBus
    from fleetcast.server.images import ImageCatalog
    from fleetcast.server.orchestrator import Orchestrator
    from fleetcast.server.settings import ServerSettings

    orch = Orchestrator(db, EventBus(), ImageCatalog(store_root), ServerSettings(data_dir=store_root))
    return release(orch, name, actor=actor)
