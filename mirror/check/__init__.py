"""`mirror check`: on this machine, clients direct vs through the proxy, judged by the echo server."""
