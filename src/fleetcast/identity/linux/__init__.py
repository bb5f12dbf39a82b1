"""fleetcast.identity.linux: importing it registers the Linux personalizer."""

from __future__ import annotations

from fleetcast.identity.base import register
from fleetcast.identity.linux.personalizer import LinuxPersonalizer

register(LinuxPersonalizer())

__all__ = ["LinuxPersonalizer"]
