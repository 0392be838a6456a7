"""The plan fingerprint that ties a transform, an embedding store and a scorer together."""

from __future__ import annotations

class FingerprintMismatchError(ValueError):
    """Parts trained against different transform statistics were put together; names both fingerprints."""


def check_fingerprint(what: str, recorded: str | None, expected: str | None, how_to_record: str = "") -> None:
    """Raises :class:`FingerprintMismatchError` when ``what`` records another plan fingerprint than ``expected``.

    An ``expected`` of None checks nothing; a ``recorded`` of None (an artifact that records no
    fingerprint) is refused when one is expected, saying ``how_to_record`` one.
    """
    if expected and recorded is None:
        raise FingerprintMismatchError(
            f"{what} records no transform plan fingerprint (the transform's plan has {expected!r}): it must say which "
            f"plan its tables or weights were built for{': ' + how_to_record if how_to_record else ''}"
        )
    if expected and recorded != expected:
        raise FingerprintMismatchError(
            f"{what} was built for transform plan fingerprint {recorded!r}, but the transform's plan "
            f"has fingerprint {expected!r}: it was trained with other fitted statistics; re-export it "
            "from the same workflow"
        )
