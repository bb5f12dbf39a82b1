"""fleetcast.identity."""
