"""Triton Python-based backend "nvtabular_transform": serves a compiled NVTabular transform plan.

A model selects it with ``backend: "nvtabular_transform"``; the plan lives in the model version
directory (``<model>/<version>/plan`` unless the ``plan`` parameter names another path). Parameters:
``layout`` (``per-column`` or ``packed``) and ``plan``. All logic is in
:class:`tritonrec.transform.serving.TransformModel`; this file moves tensors by DLPack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import triton_python_backend_utils as pb_utils

from tritonrec.transform.plan import PlanLoadError
from tritonrec.transform.serving import TransformModel
from tritonrec.triton_tensors import input_array, output_tensor


def _parameter(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        plan_parameter = _parameter(config, "plan", "plan")
        if not os.path.isabs(plan_parameter):
            # Triton does not tell auto-complete where the model lives: a relative plan path is
            # resolved in initialize(), and the exported config.pbtxt lists the tensors itself.
            return auto_complete_model_config
        layout = _parameter(config, "layout", "per-column")
        model = TransformModel.from_directory(plan_parameter, layout)
        if not config.get("input"):
            for spec in model.inputs:
                auto_complete_model_config.add_input({"name": spec.name, "data_type": f"TYPE_{spec.triton_dtype}", "dims": list(spec.dims)})
        if not config.get("output"):
            for spec in model.outputs:
                auto_complete_model_config.add_output({"name": spec.name, "data_type": f"TYPE_{spec.triton_dtype}", "dims": list(spec.dims)})
        if not config.get("max_batch_size"):
            auto_complete_model_config.set_max_batch_size(16384)
        if "dynamic_batching" not in config:
            auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = args["model_name"]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        plan_dir = Path(_parameter(config, "plan", "plan"))
        if not plan_dir.is_absolute():
            plan_dir = version_dir / plan_dir
        layout = _parameter(config, "layout", "per-column")
        try:
            self.model = TransformModel.from_directory(plan_dir, layout, int(config.get("max_batch_size", 0)))
        except (PlanLoadError, ValueError) as e:
            raise pb_utils.TritonModelException(f"model '{name}': {e}") from None
        self._check_config(name, config)
        self.output_names = [spec.name for spec in self.model.outputs]

    def _check_config(self, name, config):
        """The tensors in config.pbtxt must be the plan's, name for name, dtype and dims."""
        for field, specs in (("input", self.model.inputs), ("output", self.model.outputs)):
            declared = {t["name"]: t for t in config.get(field, [])}
            expected = {s.name: s for s in specs}
            if set(declared) != set(expected):
                raise pb_utils.TritonModelException(
                    f"model '{name}': config {field}s {sorted(declared)} differ from the plan's "
                    f"{sorted(expected)} (layout {self.model.layout!r})"
                )
            for tensor_name, spec in expected.items():
                got = declared[tensor_name]
                dims = [int(d) for d in got.get("dims", [])]
                if got["data_type"] != f"TYPE_{spec.triton_dtype}" or dims != list(spec.dims):
                    raise pb_utils.TritonModelException(
                        f"model '{name}': {field} '{tensor_name}' is {got['data_type']} {dims} in config.pbtxt; "
                        f"the plan needs TYPE_{spec.triton_dtype} {list(spec.dims)}"
                    )

    def execute(self, requests):
        # request.inputs() once per request: get_input_tensor_by_name would rebuild it per input.
        batch = [{tensor.name(): input_array(tensor) for tensor in request.inputs()} for request in requests]
        try:
            results = self.model.execute(batch)
        except Exception as e:  # a fault of the plan itself: fail these requests, keep serving
            message = f"transform failed: {type(e).__name__}: {e}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]
        responses = []
        for result in results:
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result))))
                continue
            outputs = [output_tensor(pb_utils, name, result[name]) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
