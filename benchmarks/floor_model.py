"""The Triton floor: a Python model that takes the same tensors and returns zero tensors of the
declared output shapes and dtypes, doing nothing else. Copied into a model version directory."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrec.serving.tensors import input_array, output_tensor
from tritonrec.serving.dtypes import numpy_dtype


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], numpy_dtype(t["data_type"]), [int(d) for d in t["dims"]]) for t in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = input_array(pb_utils.get_input_tensor_by_name(request, self.inputs[0])).shape[0]
            outputs = [output_tensor(pb_utils, name, np.zeros([rows, *dims], dtype=dtype)) for name, dtype, dims in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
