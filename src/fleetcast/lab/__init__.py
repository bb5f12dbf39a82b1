"""fleetcast.lab."""
