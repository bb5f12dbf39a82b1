"""fleetcast.agent."""
