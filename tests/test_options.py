"""The tiers' options objects: validated once, written as config.pbtxt parameters and read back."""

from __future__ import annotations

import re

import numpy as np
import pytest

from embedding_cache import EmbeddingStore, GpuCacheOptions, HostOptions, OptionsError, build_store
from tritonrec.serving.config import ConfigError, tier_options


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HostOptions(threads=0), "threads 0: expected >= 1"),
        (lambda: HostOptions(budget_bytes=0), "host_budget_bytes 0: expected >= 1"),
        (lambda: HostOptions(block_cache_bytes=-1), "block_cache_bytes -1: expected >= 0"),
        (lambda: GpuCacheOptions(0), "gpu_cache_bytes 0: expected an integer >= 1"),
        (lambda: GpuCacheOptions(True), "gpu_cache_bytes True: expected an integer >= 1"),
        (lambda: GpuCacheOptions(1 << 20, dtype="int8"), "gpu_cache_dtype 'int8': expected one of"),
        (lambda: GpuCacheOptions(1 << 20, eviction="fifo"), "gpu_eviction 'fifo': expected one of"),
    ],
)
def test_bad_options_are_named(make, message):
    with pytest.raises(OptionsError, match=message):
        make()


@pytest.mark.parametrize(
    "options",
    [GpuCacheOptions(1), GpuCacheOptions(3 << 30, "bfloat16", "lfu", True, True), GpuCacheOptions(4096, "float16", "lru", False, True)],
)
def test_gpu_options_survive_the_config(options):
    parameters = options.to_parameters()
    assert all(isinstance(v, str) for v in parameters.values())
    assert GpuCacheOptions.from_parameters(parameters) == options


@pytest.mark.parametrize("options", [HostOptions(), HostOptions(budget_bytes=1 << 20, threads=3)])
def test_host_options_survive_the_config(options):
    assert HostOptions.from_parameters(options.to_parameters()) == options


def test_no_gpu_tier_writes_parameters_that_read_back_as_none():
    assert GpuCacheOptions.from_parameters(GpuCacheOptions.parameters_of(None)) is None


def _config(**parameters):
    return {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}


def test_tier_options_from_a_model_config():
    host, gpu = tier_options(_config(host_budget_bytes="1000", threads="", gpu_cache_bytes="2048", gpu_eviction="lfu"), gpu=True)
    assert host == HostOptions(budget_bytes=1000)
    assert gpu == GpuCacheOptions(2048, eviction="lfu")
    assert tier_options(_config(gpu_cache_bytes="2048"), gpu=False)[1] is None  # a CPU instance has no GPU tier
    with pytest.raises(ConfigError, match="KIND_GPU instances need the parameter 'gpu_cache_bytes'"):
        tier_options(_config(), gpu=True)
    with pytest.raises(ConfigError, match="parameter 'threads' is 'many': expected an integer"):
        tier_options(_config(threads="many"), gpu=False)
    with pytest.raises(ConfigError, match="gpu_eviction 'fifo'"):
        tier_options(_config(gpu_cache_bytes="1", gpu_eviction="fifo"), gpu=True)


def test_a_store_takes_the_objects_or_the_keywords_not_both(tmp_path):
    path = build_store(tmp_path / "s", {"t": (np.arange(4), np.ones((4, 2)))})
    with EmbeddingStore(path, host=HostOptions(threads=2)) as store:
        np.testing.assert_array_equal(store.lookup("t", np.array([3, 9])), [[1, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"not both"):
        EmbeddingStore(path, host=HostOptions(threads=2), threads=3)
    with pytest.raises(ValueError, match="threads 0: expected >= 1"):
        EmbeddingStore(path, threads=0)
    with pytest.raises(ValueError, match="give both"):
        EmbeddingStore(path, gpu_cache=GpuCacheOptions(1 << 20))


def test_the_null_string_parameter_is_a_json_string():
    from tritonrec.serving.config import null_string_parameter

    assert null_string_parameter(_config()) is None
    assert null_string_parameter(_config(null_string='""')) == ""
    assert null_string_parameter(_config(null_string='"<NA>"')) == "<NA>"
    for bad in ("3", "<NA>", "[1]"):
        with pytest.raises(ConfigError, match=rf"parameter 'null_string' is '{re.escape(bad)}': expected a JSON string"):
            null_string_parameter(_config(null_string=bad))
