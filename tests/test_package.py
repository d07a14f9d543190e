"""The layout rules of DESIGN.md, checked on the source."""

import ast

import pytest

from tests.conftest import ROOT

# package -> top-level modules it must not import
FORBIDDEN = {
    "agents": {"langgraph", "graphs", "lightning_modules", "kernels", "lightning", "evals"},
    "graphs": {"lightning_modules", "kernels", "lightning", "evals"},
    "lightning_modules": {"agents", "graphs", "langgraph", "chromadb", "openai", "evals"},
    "kernels": {"agents", "graphs", "lightning_modules", "lightning", "transformers", "hydra", "omegaconf", "evals"},
    "evals": {"graphs", "lightning_modules", "kernels", "langgraph", "lightning"},
}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_dependency_rule(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = set(_imports(path)) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_our_kernels_package_is_not_mistaken_for_hugging_face_kernels():
    from transformers.utils.import_utils import is_kernels_available

    assert is_kernels_available() is False
