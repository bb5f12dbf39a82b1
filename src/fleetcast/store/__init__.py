"""fleetcast.store."""
