"""What a served model answers, computed in process: the reference served outputs are checked against.

:class:`ServedReference` loads the models of tritonrec's three backends (``nvtabular_transform``,
``embedding_lookup``, ``torch_scorer``) on the CPU from the model repository, with the
configuration the server reports for them and the way the backends load themselves
(:meth:`TransformModel.from_config`, :meth:`EmbeddingLookupModel.from_config`), and walks an
ensemble's steps through their input and output maps. A GPU cache or a KIND_GPU instance changes
no answer, so the CPU reference stands for them too. A model on any other backend (a scorer served
by onnxruntime, say) cannot be run here: :class:`NoReferenceError` names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonrec.serving.config import int_parameter, model_path

ConfigSource = Callable[[str, int], tuple[int, dict[str, Any]]]
"""``(model, version)`` -> ``(version, config)``: the configuration (Triton's JSON form) of a
model version; version -1 means the latest ready one."""

Tensors = dict[str, np.ndarray]
BACKENDS = ("nvtabular_transform", "embedding_lookup", "torch_scorer")


class NoReferenceError(ValueError):
    """A served model that tritonrec cannot run in process; the message names it and its backend."""


def server_configs(client: Any) -> ConfigSource:
    """A :data:`ConfigSource` asking a ``tritonclient.grpc.InferenceServerClient`` (the latest
    version is the highest the server lists as ready)."""

    def resolve(model: str, version: int) -> tuple[int, dict[str, Any]]:
        if version <= 0:
            versions = client.get_model_metadata(model, as_json=True).get("versions") or ["1"]
            version = max(int(v) for v in versions)
        return version, client.get_model_config(model, str(version), as_json=True)["config"]

    return resolve


def repository_configs(repository: str | os.PathLike[str]) -> ConfigSource:
    """A :data:`ConfigSource` reading ``<repository>/<model>/config.pbtxt`` (no server needed; the
    latest version is the highest numbered version directory). NoReferenceError for a model
    without one or a config that does not parse."""
    from google.protobuf import json_format, text_format  # noqa: PLC0415
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    root = Path(repository)

    def resolve(model: str, version: int) -> tuple[int, dict[str, Any]]:
        path = root / model / "config.pbtxt"
        try:
            message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except (OSError, text_format.ParseError) as e:
            raise NoReferenceError(f"model {model!r}: cannot read {path} ({e})") from None
        if version <= 0:
            versions = [int(p.name) for p in (root / model).iterdir() if p.is_dir() and p.name.isdigit()]
            version = max(versions, default=1)
        config = json_format.MessageToDict(message, preserving_proto_field_name=True)
        config.setdefault("name", model)
        return version, config

    return resolve


class ServedReference:
    """Runs a served model in process: ``reference(tensors)`` -> its outputs for one request.

    Args:
        repository: the model repository the server loaded (its files are read here).
        model: the served model's name (an ensemble, or a model of tritonrec's backends).
        configs: where the configurations come from (:func:`server_configs` for a running server).

    Attributes:
        outputs: the model's output names.

    Raises:
        NoReferenceError: the model, or a step of it, runs on another backend.
        The load errors of the backends' models (a damaged artifact, a bad configuration).
    """

    def __init__(self, repository: str | os.PathLike[str], model: str, configs: ConfigSource) -> None:
        self.repository = Path(repository)
        self._configs = configs
        self._closers: list[Callable[[], None]] = []
        version, config = configs(model, -1)
        self.outputs = [o["name"] for o in config.get("output", [])]
        try:
            self._run = self._model(model, version, config)
        except BaseException:
            self.close()
            raise

    def __call__(self, tensors: Mapping[str, np.ndarray]) -> Tensors:
        """The outputs for one request (input name -> [batch, ...] array); raises the model's error."""
        result = self._run(dict(tensors))
        return {name: result[name] for name in self.outputs}

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def _model(self, name: str, version: int, config: Mapping[str, Any]) -> Callable[[Tensors], Tensors]:
        if config.get("platform") == "ensemble":
            return self._ensemble(name, config)
        backend = config.get("backend", "")
        if backend not in BACKENDS:
            raise NoReferenceError(f"model {name!r} runs on backend {backend or config.get('platform') or '?'!r}, which tritonrec "
                                   f"cannot run in process (only {', '.join(BACKENDS)} and ensembles of them)")
        args = {"model_repository": str(self.repository / name), "model_version": str(version)}
        if backend == "nvtabular_transform":
            from tritonrec.serving.transform_model import TransformModel  # noqa: PLC0415

            return _runner(TransformModel.from_config(config, model_path(args, config, "plan")))
        if backend == "embedding_lookup":
            from tritonrec.serving.lookup_model import EmbeddingLookupModel  # noqa: PLC0415

            lookup = EmbeddingLookupModel.from_config(config, model_path(args, config, "store"))
            self._closers.append(lookup.close)
            return _runner(lookup)
        import torch  # noqa: PLC0415

        from tritonrec.serving.scorer_model import TorchScorerModel  # noqa: PLC0415

        scorer = TorchScorerModel(model_path(args, config, "scorer"), "cpu", int(config.get("max_batch_size", 0)),
                                  int_parameter(config, "threads", None))
        run = _runner(scorer)
        return lambda tensors: {k: v.numpy() for k, v in run({n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in tensors.items()}).items()}

    def _ensemble(self, name: str, config: Mapping[str, Any]) -> Callable[[Tensors], Tensors]:
        """An ensemble's steps in an order where each step's inputs exist (as Triton schedules them)."""
        steps = []
        for step in config.get("ensemble_scheduling", {}).get("step", []):
            version, step_config = self._configs(step["model_name"], int(step.get("model_version", -1)))
            steps.append((self._model(step["model_name"], version, step_config), dict(step.get("input_map", {})),
                          dict(step.get("output_map", {})), step["model_name"]))

        def run(tensors: Tensors) -> Tensors:
            pending = list(steps)
            while pending:
                ready = [s for s in pending if all(v in tensors for v in s[1].values())]
                if not ready:
                    raise NoReferenceError(f"ensemble {name!r}: steps {[s[3] for s in pending]} wait for tensors no step makes")
                for step in ready:
                    run_step, input_map, output_map, _ = step
                    result = run_step({inner: tensors[outer] for inner, outer in input_map.items()})
                    tensors.update({outer: result[inner] for inner, outer in output_map.items()})
                    pending.remove(step)
            return tensors

        return run


def _runner(model: Any) -> Callable[[Any], dict[str, Any]]:
    """One request through ``model.execute``: its outputs, or its error raised."""

    def run(tensors: Any) -> dict[str, Any]:
        result = model.execute([tensors])[0]
        if isinstance(result, Exception):
            raise result
        return dict(result)

    return run
