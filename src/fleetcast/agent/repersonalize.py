"""The agent's personalize-only task (issue 13): give the OS already on a disk a new identity --
new machine SID, reset machine IDs, a name -- without writing an image.

It is how machines that were cloned before (and share a machine SID, ``fleetcast audit sids``) get
their own SIDs without re-imaging: the server's ``fleetcast personalize CLIENTS --new-sid`` makes a
task of kind "personalize"; the agent, booted from the network, picks the disk by the task's rule and
runs the same offline personalizer as after a deployment (agent/personalize.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetcast.errors import DiskError
from fleetcast.identity.base import IdentitySettings
from fleetcast.protocol import Task

if TYPE_CHECKING:
    from fleetcast.agent.runner import Reporter, TaskRunner

logger = logging.getLogger(__name__)


def run_personalize(
    runner: TaskRunner, task: Task, reporter: Reporter, cancel: threading.Event
) -> dict[str, Any]:
    from fleetcast.agent.personalize import personalize
    from fleetcast.agent.runner import plan_post_action
    from fleetcast.disk.discovery import in_use, list_disks
    from fleetcast.disk.rules import parse_rule, select_disk

    reporter.update(phase="selecting-disk", urgent=True)
    disk = select_disk(parse_rule(task.disk_rule), list_disks(runner.allow), 0)
    target = Path(disk.path)
    busy = in_use(target)
    if busy:
        raise DiskError(
            f"disk {disk.path} is in use: {'; '.join(busy)}",
            hint="fleetcast never changes a disk in use; run the agent from the network boot environment",
        )
    runner._check(cancel)
    reporter.update(phase="personalizing", disk=disk.path, urgent=True)
    settings = IdentitySettings(
        name=task.name, ip=task.ip, gateway=task.gateway, dns=tuple(task.dns), mac=runner.mac or None,
        new_sid=task.new_sid, reset_ids=task.reset_ids,
    )  # fmt: skip
    logger.info("task %d: personalizing the OS on %s (no image written)", task.task_id, target)
    kind, lines = personalize(target, None, settings)
    changes = [f"{kind}: {line}" for line in lines]
    runner._check(cancel)
    reporter.update(phase="finishing", urgent=True)
    _, line = plan_post_action(task.then, disk=disk.path, execute=runner.execute_post_action)
    changes.append(line)
    return {"disk": disk.path, "changes": changes, "action": task.then}
