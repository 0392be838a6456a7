"""Triton Python-based backend "nvtabular_transform": serves a compiled NVTabular transform plan.

A model selects it with ``backend: "nvtabular_transform"``; the plan lives in the model version
directory (``<model>/<version>/plan`` unless the ``plan`` parameter names another path inside the model
repository; a path elsewhere needs ``allow_outside_repository: "true"``). Parameters:
``layout`` (inputs: ``per-column`` or ``packed``), ``output_layout`` (default: ``layout``), ``plan``,
``plan_fingerprint`` (when set, the plan must have it), ``null_string`` (a JSON string, e.g. ``"\\"\\""``:
string values equal to it are null, as NVTabular's missing values), ``input_dtypes`` (JSON: column -> the
dtype clients send, cast to the plan's), ``cast_float64`` (float64 outputs in OUTPUT_FP32), ``request_log`` (JSON options of
:class:`tritonrec.serving.request_log.RequestLogOptions`: each request gets a key, output ``request_key``
INT64 [batch, 1], and its raw tensors are logged to a Redis Stream) and ``bytes_inputs_under_numpy2`` (see
:func:`tritonrec.serving.tensors.check_string_inputs`). String columns arrive as BYTES tensors. KIND_GPU instances run the plan with cupy on their
device and keep tensors there (``FORCE_CPU_ONLY_INPUT_TENSORS: "no"``; inputs that arrive in host
memory are copied over; BYTES inputs are read on the host and hashed there, their codes then
move to the device). Metrics: ``tritonrec_transform_rows_total``
and ``tritonrec_transform_oov_total`` (see :mod:`tritonrec.serving.metrics`). All logic is in
:class:`tritonrec.serving.transform_model.TransformModel`; this file moves tensors by DLPack.
"""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from tritonrec.serving.config import OUTSIDE_PARAMETER, check_declared_tensors, model_path, transform_conventions
from tritonrec.serving.config import parameter as _parameter
from tritonrec.serving.fingerprint import check_fingerprint
from tritonrec.serving.metrics import RequestLogMetrics, TransformMetrics
from tritonrec.serving.request_log import REQUEST_KEY, FeatureLogging, RequestLogger, RequestLogOptions, request_key_spec
from tritonrec.serving.tensors import (
    check_string_inputs,
    device_input_array,
    device_output_tensor,
    input_array,
    input_reader,
    output_tensor,
    respond,
)
from tritonrec.serving.transform_model import LOAD_ERRORS, TransformModel


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        plan_parameter = _parameter(config, "plan", "plan")
        if not os.path.isabs(plan_parameter) or _parameter(config, OUTSIDE_PARAMETER, "false").lower() != "true":
            # Triton does not tell auto-complete where the model lives: a relative plan path is
            # resolved (and an absolute one checked against the repository) in initialize(); the
            # exported config.pbtxt lists the tensors itself. Auto-complete reads an absolute plan
            # path only where the config allows paths outside the repository.
            return auto_complete_model_config
        layout = _parameter(config, "layout", "per-column")
        model = TransformModel.from_directory(plan_parameter, layout, output_layout=_parameter(config, "output_layout", layout))
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
        layout = _parameter(config, "layout", "per-column")
        output_layout = _parameter(config, "output_layout", layout)
        self.gpu = args["model_instance_kind"] == "GPU"
        try:
            plan_dir = model_path(args, config, "plan")
            self.model = TransformModel.from_config(config, plan_dir)
            if self.gpu:  # the same plan with cupy on the instance's device; tensors stay there
                import cupy

                self.device = cupy.cuda.Device(int(args["model_instance_device_id"]))
                with self.device:
                    self.model = TransformModel(self.model.plan.to(cupy), layout, self.model.max_batch_size, output_layout,
                                                self.model.list_layout, **transform_conventions(config))
            check_fingerprint("parameter plan_fingerprint of config.pbtxt", _parameter(config, "plan_fingerprint", self.model.plan.fingerprint), self.model.plan.fingerprint)
            string_inputs = {spec.name for spec in self.model.inputs if spec.dtype == object}
            check_string_inputs(string_inputs, _parameter(config, "bytes_inputs_under_numpy2", "false").lower() == "true")
            what = f"the plan ({layout} inputs, {output_layout} outputs)"
            log_options = RequestLogOptions.from_parameter(_parameter(config, "request_log"))
            keyed = [request_key_spec()] if log_options is not None else []
            check_declared_tensors(config, "input", self.model.inputs, what)
            check_declared_tensors(config, "output", self.model.outputs + keyed, what + (" and the request key" if keyed else ""))
        except LOAD_ERRORS as e:
            raise pb_utils.TritonModelException(f"model '{name}': {e}") from None
        self.output_names = [spec.name for spec in self.model.outputs + keyed]
        self.logger = RequestLogger(log_options) if log_options is not None else None
        self.logging = None if self.logger is None else FeatureLogging(self.model.execute, self.logger, name, int(args["model_version"]),
                                                                       self.model.packed_input_columns(), self.model.plan.fingerprint,
                                                                       self.model.oov_flags, self.model.oov_inputs)
        self.log_metrics = None if self.logger is None else RequestLogMetrics(pb_utils, name, self.logger.counts)
        # BYTES inputs (no DLPack) are read on the host, on a GPU instance too: the plan hashes them there
        self.read_input = input_reader(string_inputs, device_input_array if self.gpu else input_array)
        self.metrics = TransformMetrics(pb_utils, name, lambda: (self.model.rows_total, self.model.oov_total))

    def execute(self, requests):
        run = self.model.execute
        if self.logging is not None:  # the client's request ids go into the records
            ids = [request.request_id() for request in requests]
            run = lambda batch: self.logging(batch, ids)  # noqa: E731
        if self.gpu:
            with self.device:  # the request key is a host array
                return respond(
                    pb_utils, requests, run, self.read_input,
                    lambda result: [(output_tensor if name == REQUEST_KEY else device_output_tensor)(pb_utils, name, result[name])
                                    for name in self.output_names], "transform",
                )
        return respond(
            pb_utils, requests, run, self.read_input,
            lambda result: [output_tensor(pb_utils, name, result[name]) for name in self.output_names], "transform",
        )

    def finalize(self):
        self.metrics.close()
        if self.logger is not None:
            self.logger.close()
            self.log_metrics.close()  # after the logger: its last counts go out
