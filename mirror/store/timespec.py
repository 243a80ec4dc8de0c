"""Read the times `mirror captures list --since/--until` accepts, as epoch seconds.

Three forms: relative to now (``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1w"``: that long
ago), ISO-8601 (``"2025-05-01"``, ``"2025-05-01T14:30"``, ``"2025-05-01 14:30:00+02:00"``,
``"...Z"``; without a zone it is local time) and ``"@1714560000"`` (epoch seconds).
"""

from __future__ import annotations

import math
import re
from datetime import datetime

__all__ = ["parse_time"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_time(text: str, now: float) -> float:
    """Epoch seconds for ``text``; ``now`` anchors relative times. ValueError if unreadable."""
    spec = text.strip()
    relative = _RELATIVE.fullmatch(spec)
    if relative:
        ago = float(relative.group(1)) * _UNITS[relative.group(2).lower()]
        if math.isfinite(ago):
            return now - ago
    if spec.startswith("@"):
        try:
            epoch = float(spec[1:])
        except ValueError:
            epoch = math.nan
        if math.isfinite(epoch):
            return epoch
    else:
        try:
            return datetime.fromisoformat(spec).timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    raise ValueError(
        f"{text!r} is not a time: give an ISO-8601 date/time (2025-05-01T14:30), "
        "a duration ago (90s, 10m, 2h, 1d, 1w) or @EPOCH-SECONDS"
    )
