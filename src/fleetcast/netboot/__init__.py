"""fleetcast.netboot."""
