"""Reading and checking a model's ``config.pbtxt`` (as the JSON dict Triton hands a Python model)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from embedding_cache.options import GpuCacheOptions, HostOptions, OptionsError, int_or_none


class ConfigError(ValueError):
    """A config.pbtxt that does not fit the model; the message names the field and the value."""


def parameter(config: Mapping[str, Any], key: str, default: str = "") -> str:
    """The ``parameters { key: ... value: { string_value: ... } }`` entry, or ``default`` when absent or empty."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


OUTSIDE_PARAMETER = "allow_outside_repository"


def model_path(args: Mapping[str, Any], config: Mapping[str, Any], key: str) -> Path:
    """The directory named by parameter ``key`` (default: ``key`` itself), symlinks resolved.

    A relative path is inside the model version directory (``args`` is what Triton passes to
    ``initialize``; ``args["model_repository"]`` is the model's own directory). The resolved path
    must lie inside the model repository (the model directory's parent, symlinks resolved) unless
    the config sets the parameter ``allow_outside_repository: "true"``: a repository's configs then
    cannot make a model read files elsewhere on the machine.

    Raises:
        ConfigError: naming the parameter and the path: outside the repository, or not a directory.
    """
    text = parameter(config, key, key)
    model_dir = Path(args["model_repository"])
    path = (model_dir / args["model_version"] / text).resolve()  # an absolute ``text`` replaces the base
    repository = model_dir.parent.resolve()
    if not path.is_relative_to(repository) and parameter(config, OUTSIDE_PARAMETER, "false").lower() != "true":
        raise ConfigError(
            f"parameter {key!r} is {text!r}, which resolves to {path}, outside the model repository {repository}: "
            f"keep it inside, or set the parameter {OUTSIDE_PARAMETER!r} to \"true\""
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"parameter {key!r} is {text!r}, which resolves to {path}: expected a directory, found a file")
    return path


def int_parameter(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    """An integer parameter; ``default`` when absent. Raises :class:`ConfigError` for a non-integer."""
    try:
        value = int_or_none(parameter(config, key), key)
    except OptionsError as e:
        raise ConfigError(str(e)) from None
    return default if value is None else value


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


def tier_options(config: Mapping[str, Any], gpu: bool) -> tuple[HostOptions, GpuCacheOptions | None]:
    """The store tiers' options from a lookup model's parameters (see
    :meth:`HostOptions.to_parameters`, :meth:`GpuCacheOptions.to_parameters`); the GPU cache's
    only for a ``gpu`` instance, which needs ``gpu_cache_bytes``. ConfigError naming a bad parameter."""
    strings = {key: parameter(config, key) for key in config.get("parameters", {})}
    try:
        host = HostOptions.from_parameters(strings)
        gpu_cache = GpuCacheOptions.from_parameters(strings) if gpu else None
    except OptionsError as e:
        raise ConfigError(str(e)) from None
    if gpu and gpu_cache is None:
        raise ConfigError("KIND_GPU instances need the parameter 'gpu_cache_bytes' (device memory for the GPU cache)")
    return host, gpu_cache


def null_string_parameter(config: Mapping[str, Any]) -> str | None:
    """The ``null_string`` parameter: a JSON string (``"\\"\\""`` in config.pbtxt for ``""``), the
    value of a string column that stands for null; None when absent or empty. ConfigError otherwise."""
    text = parameter(config, "null_string")
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, str):
        raise ConfigError(f"parameter 'null_string' is {text!r}: expected a JSON string, e.g. \"\" for the empty string")
    return value


def transform_conventions(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transform model's serving conventions from its parameters, as keywords of
    :class:`~tritonrec.serving.transform_model.TransformModel`: ``null_string``, ``input_dtypes``
    (a JSON object column -> dtype), ``cast_float64`` (``true``/``false``). ConfigError naming a bad one."""
    text = parameter(config, "input_dtypes")
    try:
        input_dtypes = json.loads(text) if text else {}
    except ValueError:
        input_dtypes = None
    if not isinstance(input_dtypes, dict) or not all(isinstance(v, str) for v in input_dtypes.values()):
        raise ConfigError(f"parameter 'input_dtypes' is {text!r}: expected a JSON object of column -> dtype name")
    cast = parameter(config, "cast_float64", "false").lower()
    if cast not in ("true", "false"):
        raise ConfigError(f"parameter 'cast_float64' is {cast!r}: expected true or false")
    return {"null_string": null_string_parameter(config), "input_dtypes": input_dtypes, "cast_float64": cast == "true"}
