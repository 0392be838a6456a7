"""Reading model configs without Triton: the store role each instance takes, the paths parameters name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonrec.serving.config import ConfigError, model_path, store_role


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


def _path(tmp_path, value, allow=None):
    (tmp_path / "repo" / "m" / "1" / "plan").mkdir(parents=True, exist_ok=True)
    parameters = {"plan": {"string_value": value}}
    if allow is not None:
        parameters["allow_outside_repository"] = {"string_value": allow}
    return model_path({"model_repository": str(tmp_path / "repo" / "m"), "model_version": "1"}, {"parameters": parameters}, "plan")


def test_paths_resolve_inside_the_model_repository(tmp_path):
    repo = (tmp_path / "repo").resolve()
    assert _path(tmp_path, "plan") == repo / "m" / "1" / "plan"
    (tmp_path / "repo" / "other").mkdir()
    assert _path(tmp_path, "../../other") == repo / "other"  # another model's files: still inside
    assert _path(tmp_path, str(repo / "other")) == repo / "other"
    (tmp_path / "elsewhere").mkdir()
    for value in ("../../../elsewhere", str(tmp_path / "elsewhere"), "/etc"):
        with pytest.raises(ConfigError, match=rf"parameter 'plan' is '{value}', which resolves to .*, outside the model repository {repo}"):
            _path(tmp_path, value)
        with pytest.raises(ConfigError, match="outside the model repository"):
            _path(tmp_path, value, allow="false")
    assert _path(tmp_path, "../../../elsewhere", allow="true") == (tmp_path / "elsewhere").resolve()
    assert _path(tmp_path, "/etc", allow="TRUE") == Path("/etc").resolve()


def test_symlinks_are_resolved_before_the_check(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "1" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"parameter 'plan' is 'link', which resolves to .*elsewhere, outside"):
        _path(tmp_path, "link")
    # a repository reached through a symlink is still itself
    (tmp_path / "alias").symlink_to(tmp_path / "repo")
    config = {"parameters": {"plan": {"string_value": "plan"}}}
    (tmp_path / "repo" / "m" / "1" / "plan").mkdir(exist_ok=True)
    assert model_path({"model_repository": str(tmp_path / "alias" / "m"), "model_version": "1"}, config, "plan").is_dir()


def test_a_file_where_a_directory_belongs_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"parameter 'plan' is '/etc/passwd', which resolves to /etc/passwd: expected a directory, found a file"):
        _path(tmp_path, "/etc/passwd", allow="true")
