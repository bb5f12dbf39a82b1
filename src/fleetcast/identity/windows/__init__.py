"""Windows identity, offline: machine SID, computer name, machine IDs, static IP, drivers, unattend.xml,
Sysprep diagnosis. Importing this package registers the Windows personalizer with ``identity.base``."""

from __future__ import annotations

from fleetcast.identity.windows.personalizer import Options, WindowsPersonalizer, personalize

__all__ = ["Options", "WindowsPersonalizer", "personalize"]
