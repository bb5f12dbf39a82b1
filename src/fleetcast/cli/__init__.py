"""The ``fleetcast`` command: one module per command group, heavy imports inside handlers."""
