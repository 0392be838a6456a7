"""Reading and checking a model's ``config.pbtxt`` (as the JSON dict Triton hands a Python model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.pbtxt that does not fit the model; the message names the field and the value."""


def parameter(config: Mapping[str, Any], key: str, default: str = "") -> str:
    """The ``parameters { key: ... value: { string_value: ... } }`` entry, or ``default`` when absent or empty."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


def model_path(args: Mapping[str, Any], config: Mapping[str, Any], key: str) -> Path:
    """The path in parameter ``key`` (default: ``key`` itself); a relative one is inside the model
    version directory (``args`` is what Triton passes to ``initialize``)."""
    path = Path(parameter(config, key, key))
    return path if path.is_absolute() else Path(args["model_repository"]) / args["model_version"] / path


def int_parameter(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    """An integer parameter; ``default`` when absent. Raises :class:`ConfigError` for a non-integer."""
    text = parameter(config, key)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"parameter {key!r} is {text!r}: expected an integer") from None


def check_declared_tensors(config: Mapping[str, Any], field: str, specs: Sequence[Any], what: str) -> None:
    """The ``input``/``output`` tensors of the config must be ``specs`` (TensorSpec), name, dtype and dims.

    Raises:
        ConfigError: naming the tensor and both declarations.
    """
    declared = {t["name"]: t for t in config.get(field, [])}
    expected = {s.name: s for s in specs}
    if set(declared) != set(expected):
        raise ConfigError(f"config {field}s {sorted(declared)} differ from {what}'s {sorted(expected)}")
    max_batch_size = int(config.get("max_batch_size", 0))
    for name, spec in expected.items():
        got = declared[name]
        dims = [int(d) for d in got.get("dims", [])]
        want = list(spec.config_dims(max_batch_size)) if hasattr(spec, "config_dims") else list(spec.dims)
        if got["data_type"] != f"TYPE_{spec.triton_dtype}" or dims != want:
            raise ConfigError(
                f"{field} '{name}' is {got['data_type']} {dims} in config.pbtxt; {what} needs "
                f"TYPE_{spec.triton_dtype} {want}"
            )


STORE_ROLES = ("secondary", "primary")


def store_role(config: Mapping[str, Any], instance_name: str) -> str:
    """The role in which an instance opens its store's RocksDB tier, from parameter ``store_role``.

    ``secondary`` (default): every instance reads, none writes; any number of instances and
    models may share the store. ``primary``: the model's first instance (instance 0 of its first
    instance group, named ``<group name>_0`` by Triton) is the store's one writer, the model's other
    instances are secondaries. At most one model may declare a shared store primary.

    Args:
        config: the model config (Triton's JSON form, instance groups named).
        instance_name: ``args["model_instance_name"]`` of the instance.

    Raises:
        ConfigError: another value.
    """
    role = parameter(config, "store_role", "secondary")
    if role not in STORE_ROLES:
        raise ConfigError(f"parameter 'store_role' is {role!r}: expected one of {STORE_ROLES}")
    groups = config.get("instance_group") or [{}]
    first = f"{groups[0].get('name', config.get('name', ''))}_0"
    return "primary" if role == "primary" and instance_name == first else "secondary"
