"""Requests as the serving core sees them: the error that rejects one request, and the per-request
check that lets the good requests of one ``execute`` be served together."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

class RequestError(ValueError):
    """A request the model cannot transform; the message names the input and what was expected."""


def check_requests(
    requests: Sequence[Mapping[str, Any]], check: Callable[[Mapping[str, Any]], int]
) -> tuple[list[Any], list[tuple[int, int]]]:
    """Checks each request of one execute with ``check`` (returns its rows or raises RequestError).

    Returns:
        ``(results, good)``: per request, the RequestError that rejects it or a placeholder to
        replace with its outputs; and (request number, rows) of every request that passed.
    """
    results: list[Any] = []
    good: list[tuple[int, int]] = []
    for i, tensors in enumerate(requests):
        try:
            good.append((i, check(tensors)))
            results.append({})
        except RequestError as e:
            results.append(e)
    return results, good
