"""Requests as the serving core sees them: the error that rejects one request, the per-request
check, and the one way every served model runs the good requests of one ``execute`` together.

A served model's ``execute(requests)`` is ``run_batched(requests, self.check_request, self._run)``:
each request is checked alone (a bad one gets its :class:`RequestError`, the others are served),
the good ones are merged and run in one call, and each gets its own block of rows back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Request = Mapping[str, Any]
"""One request's tensors: input name -> array ([rows, ...]; numpy, cupy or torch)."""


class RequestError(ValueError):
    """A request the model cannot serve; the message names the input and what was expected."""


def check_requests(requests: Sequence[Request], check: Callable[[Request], int]) -> tuple[list[Any], list[tuple[int, int]]]:
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


def run_batched(
    requests: Sequence[Request],
    check: Callable[[Request], int],
    run: Callable[[list[Request], list[int]], list[Any]],
    *,
    retry_on: tuple[type[Exception], ...] = (),
    refuse: Callable[[Exception], Exception] = lambda e: RequestError(str(e)),
) -> list[Any]:
    """Checks every request, runs the good ones together, and returns one result per request.

    Args:
        requests: the requests of one execute.
        check: one request -> its rows; raises :class:`RequestError` for a request to refuse.
        run: (the good requests, their rows) -> per good request its outputs or its error; it
            merges them, runs once and gives each its rows back (see :func:`row_slices`).
        retry_on: errors of ``run`` that some request's values caused (a value no step takes, an
            id no tier holds): the requests are then run one by one, so only those holding such
            values fail, each with ``refuse(error)``.
        refuse: the error a request gets for a ``retry_on`` error.

    Returns:
        Per request, in order: what ``run`` gave it, or the error that rejects it.
    """
    results, good = check_requests(requests, check)
    if not good:
        return results
    batch, rows = [requests[i] for i, _ in good], [n for _, n in good]
    try:
        outcomes = run(batch, rows)
    except retry_on as error:
        outcomes = [refuse(error)] if len(batch) == 1 else [_run_alone(run, request, n, retry_on, refuse) for request, n in zip(batch, rows)]
    for (i, _), outcome in zip(good, outcomes):
        results[i] = outcome
    return results


def _run_alone(run: Callable[[list[Request], list[int]], list[Any]], request: Request, rows: int,
               retry_on: tuple[type[Exception], ...], refuse: Callable[[Exception], Exception]) -> Any:
    try:
        return run([request], [rows])[0]
    except retry_on as error:
        return refuse(error)


def row_slices(rows: Sequence[int]) -> list[slice]:
    """The block of merged rows of each request, in order (``rows``: each request's row count)."""
    out, start = [], 0
    for n in rows:
        out.append(slice(start, start + n))
        start += n
    return out
