"""The fingerprint echo server (``mirror echo``): see :mod:`mirror.echo.server`; its answer as a
fingerprint view: :mod:`mirror.echo.report_view`."""
