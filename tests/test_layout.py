"""The repository's layout rules (README, "Repository layout"), read from the source with ``ast``.

backends/ -> tritonrec.serving -> tritonrec.transform and embedding_cache (no Triton inside) ->
the extensions. tritonrec.transform and embedding_cache do not import each other; both may use the
neutral leaves ``tritonrec.integrity`` and ``tritonrec._native``. No function in the product code is
longer than 60 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-local ones included; relative imports
    resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # "from tritonrec import serving" names a module too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _offending(paths: list[Path], refused: tuple[str, ...], allowed: tuple[str, ...] = (), root: Path = ROOT) -> list[str]:
    bad = []
    for path in paths:
        for line, module in _imports(path, root):
            hit = any(module == r or module.startswith(r + ".") for r in refused)
            ok = any(module == a or module.startswith(a + ".") for a in allowed)
            if hit and not ok:
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


def test_transform_does_not_import_embedding_cache() -> None:
    assert _offending(_sources("tritonrec/transform"), ("embedding_cache",)) == []


def test_embedding_cache_imports_only_the_neutral_leaves_of_tritonrec() -> None:
    bad = _offending(_sources("embedding_cache"), ("tritonrec",), ("tritonrec.integrity", "tritonrec._native"))
    assert bad == []


def test_the_neutral_leaves_import_neither_side() -> None:
    leaves = [ROOT / "tritonrec/integrity.py"]
    assert _offending(leaves, ("tritonrec", "embedding_cache")) == []


@pytest.mark.parametrize("folder", ["tritonrec/transform", "embedding_cache"])
def test_the_core_has_no_triton_inside(folder: str) -> None:
    refused = ("triton_python_backend_utils", "tritonclient", "tritonrec.serving", "tritonrec.export")
    assert _offending(_sources(folder), refused) == []


def test_backends_import_only_the_serving_core() -> None:
    refused = ("tritonrec", "embedding_cache")
    assert _offending(_sources("backends"), refused, ("tritonrec.serving",)) == []


def test_the_checker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    """The rules above cannot pass by not looking: a local import and a relative one are found."""
    probe = tmp_path / "tritonrec" / "transform" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from embedding_cache import _core\n    from ..serving import tensors\n")
    assert _offending([probe], ("embedding_cache",), root=tmp_path) == [
        "tritonrec/transform/probe.py:2 imports embedding_cache",
        "tritonrec/transform/probe.py:2 imports embedding_cache._core",
    ]
    assert _offending([probe], ("tritonrec.serving",), root=tmp_path) == [
        "tritonrec/transform/probe.py:3 imports tritonrec.serving",
        "tritonrec/transform/probe.py:3 imports tritonrec.serving.tensors",
    ]


def test_the_length_check_counts_lines(tmp_path: Path) -> None:
    probe = tmp_path / "long.py"
    probe.write_text("def f():\n" + "    x = 1\n" * 60 + "def g():\n" + "    x = 1\n" * 59)
    assert _long_functions([probe], root=tmp_path) == ["long.py:1 f (61 lines)"]


def _long_functions(paths: list[Path], root: Path = ROOT) -> list[str]:
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return long


def test_no_function_in_the_product_code_is_longer_than_60_lines() -> None:
    assert _long_functions(_sources("tritonrec", "embedding_cache")) == []
