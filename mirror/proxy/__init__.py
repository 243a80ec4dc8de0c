"""The proxy: listeners per mode, one handler per client connection, relays, capture records."""
