"""fleetcast.server."""
