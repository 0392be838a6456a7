"""Triton Python-based backend "torch_scorer": serves a tritonrec scorer (TorchScript dense model).

Inputs ``dense`` FP32 [batch, n_dense] and ``embeddings`` FP32 [batch, n_tables, dim] (names from
the scorer's ``scorer.json``); output ``probability`` FP32 [batch, 1]. KIND_CPU instances run on
the host, KIND_GPU instances on their device. Parameters: ``scorer`` (directory; relative paths are
inside the version directory; default ``scorer``; inside the model repository unless
``allow_outside_repository`` is ``"true"``), ``threads`` (torch CPU threads),
``plan_fingerprint`` (when set, the scorer must record it), ``request_log`` (JSON options of
:class:`tritonrec.serving.request_log.RequestLogOptions`: the model then also takes ``request_key``
INT64 [batch, 1] and logs each answer under it, see :class:`~tritonrec.serving.request_log.PredictionLogging`).
All logic is in :class:`tritonrec.serving.scorer_model.TorchScorerModel`.
"""

from __future__ import annotations

import json

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack

from tritonrec.serving.config import check_declared_tensors, int_parameter, model_path, parameter
from tritonrec.serving.fingerprint import check_fingerprint
from tritonrec.serving.metrics import RequestLogMetrics
from tritonrec.serving.request_log import PredictionLogging, RequestLogger, RequestLogOptions, request_key_spec
from tritonrec.serving.scorer_model import LOAD_ERRORS, TorchScorerModel
from tritonrec.serving.tensors import output_tensor, respond


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = args["model_name"]
        self.gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if self.gpu else "cpu"
        try:
            scorer_dir = model_path(args, config, "scorer")
            self.model = TorchScorerModel(scorer_dir, device, int(config.get("max_batch_size", 0)), int_parameter(config, "threads", None))
            check_fingerprint(f"scorer {scorer_dir}", self.model.info.plan_fingerprint, parameter(config, "plan_fingerprint") or None)
            log_options = RequestLogOptions.from_parameter(parameter(config, "request_log"))
            keyed = [request_key_spec()] if log_options is not None else []
            check_declared_tensors(config, "input", self.model.inputs + keyed, f"the scorer {scorer_dir}" + (" and the request key" if keyed else ""))
            check_declared_tensors(config, "output", self.model.outputs, f"the scorer {scorer_dir}")
        except LOAD_ERRORS as e:
            raise pb_utils.TritonModelException(f"model '{name}': {e}") from None
        self.output = self.model.info.output
        self.logger = RequestLogger(log_options) if log_options is not None else None
        self.run = self.model.execute if self.logger is None else PredictionLogging(self.model.execute, self.logger, name, int(args["model_version"]))
        self.log_metrics = None if self.logger is None else RequestLogMetrics(pb_utils, name, self.logger.counts)

    def execute(self, requests):
        return respond(pb_utils, requests, self.run, torch.from_dlpack, self._outputs, "scoring")

    def finalize(self):
        if self.logger is not None:
            self.logger.close()
            self.log_metrics.close()  # after the logger: its last counts go out

    def _outputs(self, result):
        scores = result[self.output].contiguous()
        if self.gpu:
            return [pb_utils.Tensor.from_dlpack(self.output, to_dlpack(scores))]
        return [output_tensor(pb_utils, self.output, scores.numpy())]
