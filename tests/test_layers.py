"""The package's layering holds: no module imports a module of a higher layer (imports inside functions
count too, and so do imports by name: ``import_module("saekit...")``, ``__import__("saekit...")``).
registry < jobs < data < models < activations < sae < features < steering < evals < widgets, with the shared base
(errors, config, workspace, the private helpers, monitor) below them all and the CLI on top. A lower layer that
needs a higher one's object (a widget, steering) asks ``saekit._provided`` for it by name; the top says which
module provides it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "saekit"
LAYERS = ["registry", "jobs", "data", "models", "activations", "sae", "features", "steering", "evals", "widgets"]
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
        elif isinstance(node, ast.Call) and _called(node.func) in BY_NAME and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value
            elif isinstance(first, ast.JoinedStr):  # f"saekit.widgets.{name}": its fixed start names the package
                head = first.values[0] if first.values else None
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    yield node.lineno, head.value.rstrip(".")


BY_NAME = {"import_module", "__import__", "importlib.import_module", "importlib.__import__"}


def _called(func) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_called(func.value)}.{func.attr}" if isinstance(func.value, (ast.Name, ast.Attribute)) else func.attr
    return ""


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
    """The scanner itself finds an upward import, by statement or by name (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib\nfrom importlib import import_module\n\n\ndef f():\n"
                   "    from saekit.widgets import job_widget\n"
                   "    import_module('saekit.widgets.job_widget')\n"
                   "    importlib.import_module(\"saekit.steering.intervention\")\n"
                   "    __import__('saekit.widgets')\n"
                   "    name = 'card'\n"
                   "    import_module(f'saekit.widgets.feature_{name}')\n")
    targets = [t for _, t in _imports(bad, "saekit.registry.bad") if t.startswith("saekit")]
    assert sorted(targets) == ["saekit.steering.intervention", "saekit.widgets", "saekit.widgets.feature_",
                               "saekit.widgets.job_widget", "saekit.widgets.job_widget"]
    assert all(_layer(t) > _layer("saekit.registry.bad") for t in targets)
