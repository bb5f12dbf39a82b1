"""fleetcast.identity.linux."""
