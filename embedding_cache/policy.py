"""What a lookup returns for a key that no tier holds: the missing-key policy."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

POLICIES = ("zeros", "vector", "error")


@dataclasses.dataclass(frozen=True)
class MissingPolicy:
    """What a lookup returns for a key that exists nowhere.

    ``zeros``: a zero row; ``vector``: the fixed ``vector`` (float32 (dim,)); ``error``: KeyError
    listing up to 10 of the missing keys.
    """

    policy: str = "zeros"
    vector: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, value: Any, dim: int, table: str) -> MissingPolicy:
        """From ``"zeros"``, ``"error"``, a (dim,) vector, or a MissingPolicy."""
        if isinstance(value, MissingPolicy):
            policy = value
        elif isinstance(value, str):
            if value not in ("zeros", "error"):
                raise ValueError(f"table {table!r}: missing-key policy {value!r}: expected 'zeros', 'error' or a vector of {dim} floats")
            policy = cls(value)
        else:
            vector = np.asarray(value, dtype=np.float64)
            if vector.shape != (dim,):
                raise ValueError(f"table {table!r}: default vector has shape {vector.shape}: expected ({dim},)")
            policy = cls("vector", tuple(float(v) for v in vector))
        if policy.policy == "vector" and (policy.vector is None or len(policy.vector) != dim):
            raise ValueError(f"table {table!r}: default vector must have {dim} values")
        return policy

    @classmethod
    def from_json(cls, entry: dict[str, Any] | None) -> MissingPolicy:
        """From a manifest's ``missing`` entry (absent: ``zeros``)."""
        entry = entry or {"policy": "zeros"}
        return cls(entry["policy"], tuple(entry["vector"]) if "vector" in entry else None)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, **({"vector": list(self.vector)} if self.vector is not None else {})}

    def apply(self, table: str, keys: np.ndarray, out: np.ndarray, absent: np.ndarray) -> None:
        """Fills the rows of ``out`` (float32 (n, dim) host, zeros there already) where ``absent``
        (bool (n,)) is set: the default vector, or KeyError naming ``table`` and up to 10 ``keys``."""
        if self.policy == "vector":
            out[absent] = np.asarray(self.vector, dtype=np.float32)
        elif self.policy == "error":
            raise KeyError(absent_keys_message(table, keys[absent]))


def absent_keys_message(table: str, keys: Any) -> str:
    """``"<n> key(s) not in table '<table>': [up to 10 keys] ..."`` for keys (n,) that exist nowhere."""
    listed = keys[:10].tolist()
    return f"{keys.size} key(s) not in table {table!r}: {listed}{' ...' if keys.size > 10 else ''}"
