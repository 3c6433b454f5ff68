"""The import direction of design §2, enforced by reading every module's imports (nothing is imported).

pipeline -> stages (entry points) -> stages.{data, models, metrics} -> {heads, cache_spec}
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "heads", "stages", "cache_spec")
LIBRARIES = ("stages.data", "stages.models", "stages.metrics")
# ablate is a sweep over the train and evaluate stages themselves, not a user of their helpers
ENTRY_POINT_EXCEPTIONS = {"stages.ablate": {"stages.train", "stages.evaluate"}}
HEAD_HELPERS = ("heads._layers", "heads._grouping", "heads._extent", "heads.base")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


FILES = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in p.parts]
MODULES = {_module_name(p): _imports(p) for p in FILES}
ENTRY_POINTS = {m for m in MODULES if m.startswith("stages.") and m.count(".") == 1 and m not in LIBRARIES}


def _ours(imported: set[str]) -> set[str]:
    """Imported names that are our modules (``from x import name`` adds ``x.name``, kept only if it is a module)."""
    return {n for n in imported if n in MODULES}


def test_the_tree_is_as_designed() -> None:
    assert {"stages.extract", "stages.train", "stages.evaluate", "stages.ablate"} <= ENTRY_POINTS
    assert any(m.startswith("stages.data.synth.") or m == "stages.data.synth" for m in MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, "cache_spec")))
def test_cache_spec_needs_no_torch_and_nothing_above_it(module: str) -> None:
    bad = {n for n in MODULES[module] if _within(n.split(".")[0], "torch") or n.split(".")[0] in ("torchvision",)}
    bad |= {n for n in _ours(MODULES[module]) if not _within(n, "cache_spec")}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, "heads")))
def test_heads_import_only_torch_cache_spec_views_and_head_helpers(module: str) -> None:
    stdlib = sys.stdlib_module_names
    bad = set()
    for name in MODULES[module]:
        top = name.split(".")[0]
        if top in stdlib or top in ("torch", "torchvision", "__future__"):
            continue
        if _within(name, "cache_spec.views") or any(_within(name, h) for h in HEAD_HELPERS):
            continue
        if module == "heads" and name.startswith("heads."):  # the registry gathers the heads
            continue
        bad.add(name)
    assert not bad, f"{module} imports {sorted(bad)}: a head may only use torch, cache_spec.views and heads' helpers"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if any(_within(m, lib) for lib in LIBRARIES)))
def test_libraries_never_import_stage_entry_points_or_the_cli(module: str) -> None:
    bad = {n for n in _ours(MODULES[module]) if n in ENTRY_POINTS or _within(n, "pipeline") or n == "stages"}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, "stages.metrics")))
def test_metrics_need_no_torch(module: str) -> None:
    bad = {n for n in MODULES[module] if n.split(".")[0] in ("torch", "torchvision")}
    assert not bad, f"{module} imports {sorted(bad)}: metrics are numpy so they run anywhere"


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_entry_points_do_not_import_each_other(module: str) -> None:
    allowed = ENTRY_POINT_EXCEPTIONS.get(module, set())
    bad = {n for n in _ours(MODULES[module]) if n in ENTRY_POINTS and n != module and n not in allowed}
    bad |= {n for n in _ours(MODULES[module]) if _within(n, "pipeline")}
    assert not bad, f"{module} imports {sorted(bad)}: move the shared helper into stages.data/models/metrics"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_pipeline_imports_pipeline(module: str) -> None:
    if _within(module, "pipeline"):
        return
    bad = {n for n in _ours(MODULES[module]) if _within(n, "pipeline")}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_walker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    """A violation hidden in a function body or a ``from`` form is still seen, so the rules can fail."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from stages.train import x\n    import torch.nn\n")
    assert _imports(f) == {"stages.train", "stages.train.x", "torch.nn"}
    assert _ours(_imports(f)) == {"stages.train"}


def test_the_cli_imports_no_torch_until_a_command_runs() -> None:
    """``pipeline --help`` stays instant: commands import their stage (and torch) lazily."""
    heavy = ("torch", "heads", "stages", "pipeline.config")
    code = f"import sys, pipeline.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_dvc_stages_depend_on_the_code_they_run() -> None:
    """Every code dep in dvc.yaml exists, and each stage depends on its entry module and everything below it."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    below = {"stages/data", "stages/models", "stages/metrics", "heads", "cache_spec"}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        code = [d for d in body["deps"] if "${" not in d]
        assert all((ROOT / d).exists() for d in code), f"{name}: {code}"
        if name != "synth":
            assert below <= set(code), f"{name} misses {sorted(below - set(code))}"
            entry = body["cmd"].split()[1].replace("train-head", "train")
            assert f"stages/{entry}.py" in code, f"{name} does not depend on stages/{entry}.py"
