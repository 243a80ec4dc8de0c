"""A relay plan's views for the capture record: its emitted fingerprint and TLS verdicts.

The proxy encodes them as JSON once per plan (plans are shared between hellos of one shape:
:func:`plan_views_json`); the store process decodes them (:func:`plan_views`, cached) into the
record's ``emitted.tls.fingerprint`` and ``emitted.fidelity`` without loading libcurl.
"""

from __future__ import annotations

import functools

import orjson

from mirror.fingerprint.report import jsonable
from mirror.record.values import fidelity_report

_MAX_ENCODED_PLANS = 512
_PLAN_VIEWS: dict[int, tuple] = {}


def plan_views_json(plan) -> bytes:
    """A relay plan's emitted fingerprint and TLS verdicts, encoded once per plan (plans are
    shared between hellos of one shape) for the store process, which then needs no libcurl."""
    entry = _PLAN_VIEWS.get(id(plan))
    if entry is None or entry[0] is not plan:
        if len(_PLAN_VIEWS) >= _MAX_ENCODED_PLANS:
            _PLAN_VIEWS.clear()
        tls = {name: (f.status, f.detail) for name, f in plan.fidelity.items()}
        views = orjson.dumps([jsonable(plan.plan.fingerprint), fidelity_report(tls, {})],
                             default=repr, option=orjson.OPT_NON_STR_KEYS)   # never raises
        entry = _PLAN_VIEWS[id(plan)] = (plan, views)
    return entry[1]


@functools.lru_cache(maxsize=64)
def plan_views(views_json: bytes) -> tuple[dict, dict]:
    """``(emitted fingerprint, TLS fidelity report)`` decoded from :func:`plan_views_json`."""
    fingerprint, fidelity = orjson.loads(views_json)
    return fingerprint, fidelity


def emitted_fingerprint_of(views_json: bytes) -> dict:
    """The curl_cffi Fingerprint emitted (shared between records: never changed)."""
    return plan_views(views_json)[0]


def plan_fidelity_of(views_json: bytes, tcp: dict) -> dict:
    """The plan's TLS verdicts and what our SYN carried."""
    report = dict(plan_views(views_json)[1])
    report.update(fidelity_report({}, tcp))
    return report
