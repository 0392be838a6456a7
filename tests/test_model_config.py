"""Reading model configs without Triton: the store role each instance takes."""

from __future__ import annotations

import pytest

from tritonrec.model_config import ConfigError, store_role


def _config(role=None, groups=({"name": "m_0", "count": 2},)):
    config = {"name": "m", "instance_group": list(groups)}
    if role is not None:
        config["parameters"] = {"store_role": {"string_value": role}}
    return config


def test_every_instance_reads_unless_the_model_declares_the_writer():
    assert {store_role(_config(), name) for name in ("m_0_0", "m_0_1")} == {"secondary"}
    assert store_role(_config("secondary"), "m_0_0") == "secondary"
    assert [store_role(_config("primary"), name) for name in ("m_0_0", "m_0_1")] == ["primary", "secondary"]
    groups = ({"name": "gpus", "count": 2}, {"name": "cpus", "count": 1})
    assert [store_role(_config("primary", groups), name) for name in ("gpus_0", "gpus_1", "cpus_0")] == ["primary", "secondary", "secondary"]


def test_a_bad_role_is_named():
    with pytest.raises(ConfigError, match=r"parameter 'store_role' is 'writer': expected one of \('secondary', 'primary'\)"):
        store_role(_config("writer"), "m_0_0")
