"""Where mirror keeps its state by default: the user's data directory (XDG), one place for all."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """``$MIRROR_HOME``, else ``$XDG_DATA_HOME/mirror``, else ``~/.local/share/mirror``."""
    explicit = os.environ.get("MIRROR_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "mirror"


def default_ca_dir() -> Path:
    return data_dir() / "ca"


def default_store_path() -> Path:
    return data_dir() / "captures.sqlite3"
