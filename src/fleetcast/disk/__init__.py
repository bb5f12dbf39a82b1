"""fleetcast.disk."""
