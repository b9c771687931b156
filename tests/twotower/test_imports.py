"""Imports run one way: orchestration (`twotower`) -> `twotower_model` -> `twotower_features`.

Two independent checks: every import statement in the sources, deferred ones inside functions
included, read with `ast`; and what a fresh interpreter has loaded after importing each package's
modules (the Spark side and the CLI never load TensorFlow; the libraries never load orchestration).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what each layer may import of this project's packages, and the third-party packages it must not
ALLOWED = {
    "twotower_features": ({"twotower_features"}, {"tensorflow", "keras"}),
    "twotower_model": ({"twotower_model", "twotower_features"}, set()),
    "twotower": ({"twotower", "twotower_model", "twotower_features"}, set()),
}
OURS = set(ALLOWED)


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
    )


def _imported_roots(path: Path, module: str) -> set[str]:
    """Top-level names of every module imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                roots.add(base[0])
            elif node.module:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_goes_up_a_layer_even_deferred(package):
    allowed, forbidden = ALLOWED[package]
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        roots = _imported_roots(path, module)
        bad += [f"{path.relative_to(ROOT)} imports {r}" for r in sorted(roots & (OURS - allowed) | roots & forbidden)]
    assert bad == []


def test_the_source_check_sees_deferred_and_relative_imports(tmp_path):
    # the checker itself: a deferred import inside a function and a relative import both count
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    import tensorflow\n    from ..twotower_model import x\n")
    assert _imported_roots(f, "twotower_features.sub.mod") == {"tensorflow", "twotower_features"}
    f.write_text("import os\nif os.environ.get('X'):\n    from twotower import cli\n")
    assert _imported_roots(f, "twotower_features.mod") == {"os", "twotower"}


def _loaded_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_spark_side_loads_neither_tensorflow_nor_the_layers_above():
    loaded = _loaded_after(_modules("twotower_features"))
    assert "pyspark" in loaded  # the check sees what was imported
    assert not loaded & {"tensorflow", "keras", "twotower_model", "twotower"}


def test_model_package_loads_no_orchestration():
    loaded = _loaded_after(_modules("twotower_model"))
    assert "tensorflow" in loaded and "twotower_features" in loaded
    assert "twotower" not in loaded


def test_cli_and_job_files_load_no_tensorflow():
    loaded = _loaded_after(["twotower.cli", "twotower.stages", "twotower.nightly", "twotower.fingerprints", "twotower.report"])
    assert "twotower_features" in loaded
    assert not loaded & {"tensorflow", "keras"}
    for job in sorted((ROOT / "jobs").glob("*.py")):
        assert "from twotower.cli import main" in job.read_text(), job.name
