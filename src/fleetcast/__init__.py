"""fleetcast: capture a golden disk into a deduplicated image and deploy it to many machines at once."""

from __future__ import annotations

__version__ = "0.1.0"
