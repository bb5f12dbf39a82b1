"""fleetcast.identity.windows."""
