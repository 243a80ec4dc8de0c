"""The fingerprint echo server (``mirror echo``): see :mod:`mirror.echo.server`."""
