"""The package's layering holds: no module imports a module of a higher layer (imports inside functions
count too). registry < jobs < data < models < activations < sae < features < steering < widgets, with the
shared base (errors, config, workspace, the private helpers, monitor) below them all and the CLI on top."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "saekit"
LAYERS = ["registry", "jobs", "data", "models", "activations", "sae", "features", "steering", "widgets"]
TOP = {"cli", "demo", "__init__", "__main__"}  # may import anything


def _layer(module: str) -> int:
    """0 for the shared base, 1.. for the layers in order, a large number for the top."""
    parts = module.split(".")
    if parts[0] != "saekit":
        return -1
    if len(parts) == 1 or parts[1] in TOP:
        return 100
    if parts[1] in LAYERS:
        return 1 + LAYERS.index(parts[1])
    return 0  # errors, config, workspace, _fs, _zarr, _checks, _trust, _table, _rows, monitor, ...


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:  # `from saekit import registry` imports the module saekit.registry
                sub = PACKAGE.parent.joinpath(*f"{target}.{alias.name}".split("."))
                yield node.lineno, f"{target}.{alias.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else target


def test_no_lower_layer_imports_a_higher_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "saekit." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        module = module.removesuffix(".__init__")
        own = _layer(module)
        for line, target in _imports(path, module):
            if target.startswith("saekit") and _layer(target) > own:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({module}) imports {target}")
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path):
    """The scanner itself finds an upward import (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from saekit.widgets import job_widget\n")
    targets = [t for _, t in _imports(bad, "saekit.registry.bad")]
    assert targets == ["saekit.widgets.job_widget"] and _layer(targets[0]) > _layer("saekit.registry.bad")
