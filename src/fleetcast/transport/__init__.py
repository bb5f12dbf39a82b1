"""fleetcast.transport."""
