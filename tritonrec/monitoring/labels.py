"""Delayed labels (a click minutes after the request) to a Redis Stream, keyed by request id.

One stream entry per label: ``id`` (the client's request id or the request key the ensemble
returned, as text), ``label`` (``0`` or ``1``) and ``time_ns`` (when it was reported, UTC
nanoseconds). The monitor joins them to logged requests within its window; ids it does not know
are counted there, not refused here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

LABEL_STREAM = "tritonrec:labels"
"""The stream of labels."""
_CHUNK = 1000


class LabelError(ValueError):
    """Labels that cannot be reported; the message names the position and the value, or Redis's error."""


def _check_label(i: int, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if number not in (0.0, 1.0):
        raise LabelError(f"label {i} is {value!r}: expected 0 or 1")
    return int(number)


def _check_id(i: int, value: Any) -> str:
    if isinstance(value, bool) or value is None or (isinstance(value, float) and (math.isnan(value) or value != int(value))):
        raise LabelError(f"request id {i} is {value!r}: expected a non-empty string or an integer")
    text = str(int(value)) if isinstance(value, float) else str(value)
    if not text:
        raise LabelError(f"request id {i} is empty: expected a non-empty string or an integer")
    return text


def report_labels(redis_url: str, request_ids: Iterable[Any], labels: Iterable[Any], *, stream: str = LABEL_STREAM,
                  maxlen: int = 10_000_000, timeout_s: float = 5.0) -> int:
    """Publishes ``labels[i]`` for ``request_ids[i]``; returns how many were written.

    Args:
        redis_url: ``redis://HOST:PORT[/DB]``.
        request_ids: the client's request ids (strings) or the request keys the ensemble returned (integers).
        labels: 0 or 1 each (bools, integers or floats equal to 0 or 1).
        stream: the label stream's key; trimmed to about ``maxlen`` entries.

    Raises:
        LabelError: lengths differ, a label not 0/1, an empty or missing id (nothing is written);
            or Redis failed (the labels of earlier chunks of 1,000 were written: the count says how many).
    """
    import redis  # noqa: PLC0415

    ids, values = list(request_ids), list(labels)
    if len(ids) != len(values):
        raise LabelError(f"{len(ids)} request ids and {len(values)} labels: expected one label per id")
    entries = [(_check_id(i, r), _check_label(i, v)) for i, (r, v) in enumerate(zip(ids, values))]
    written = 0
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        now = time.time_ns()
        for start in range(0, len(entries), _CHUNK):
            pipe = client.pipeline(transaction=False)
            for request_id, label in entries[start:start + _CHUNK]:
                pipe.xadd(stream, {"id": request_id, "label": label, "time_ns": now}, maxlen=maxlen, approximate=True)
            pipe.execute()
            written += len(entries[start:start + _CHUNK])
    except (redis.RedisError, OSError, ValueError) as e:  # ValueError: a URL redis-py cannot read
        raise LabelError(f"{redis_url}: {type(e).__name__}: {e} ({written} of {len(entries)} labels written)") from None
    return written
