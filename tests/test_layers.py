"""The package's layers, checked on its source: the folders show the flow (study file -> specs ->
engine -> storage -> runs; storage -> analysis -> report; cli on top), and nothing reaches back.

Every import counts, at module level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ablate"

#: What each subpackage may import from ablate (itself always).
ALLOWED = {
    "spec": set(),
    "engine": {"spec", "failpoints"},
    "storage": {"spec", "failpoints"},
    "runs": {"spec", "engine", "storage", "failpoints"},
    "analysis": {"spec", "storage"},
    "report": {"spec", "storage", "analysis", "failpoints"},
    "cli": {"spec", "engine", "storage", "runs", "analysis", "report", "failpoints"},
}
#: Third-party packages a subpackage must not import.
FORBIDDEN = {
    "spec": {"torch", "torchvision", "optuna", "optuna_dashboard", "pandas", "plotly"},
    "engine": {"optuna", "optuna_dashboard", "plotly"},
    "storage": {"torch", "torchvision", "plotly"},
    "analysis": {"torch", "torchvision", "plotly"},
    "report": {"torch", "torchvision"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, absolute, lazy imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from ablate.runs import stopping` imports a module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):  # f"ablate.runs.{name}"
                out.add(str(arg.values[0].value).rstrip("."))
    return out


MODULES = modules()


def graph() -> dict[str, set[str]]:
    return {m: {i for i in imports(p, m) if i in MODULES and i != m} for m, p in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_layers_below_it(module):
    own = layer(module)
    if own not in ALLOWED:
        return  # ablate, ablate.__main__, ablate.failpoints
    allowed = ALLOWED[own] | {own}
    bad = sorted(i for i in graph()[module] if layer(i) not in allowed and i != "ablate")
    assert not bad, f"{module} ({own}) imports {bad}; {own} may import only {sorted(allowed)}"
    third = {i.split(".")[0] for i in imports(MODULES[module], module)}
    assert not third & FORBIDDEN.get(own, set()), f"{module} imports {sorted(third & FORBIDDEN[own])}"


def test_no_import_cycle():
    g = graph()
    # A package imports its own modules (its public surface): that is not a cycle.
    edges = {m: {i for i in deps if not (m == i.rpartition(".")[0] and MODULES[m].name == "__init__.py")} for m, deps in g.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if seen.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in seen:
                visit(n)
        stack.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m)


PRIVATE_OK = {"ablate.storage.rdb", "ablate.storage.retry"}  # the storage modules that touch Optuna's private API
#: torch's fused per-tensor norm: what torch.nn.utils.clip_grad_norm_ itself calls; no public form before torch 2.6.
TORCH_PRIVATE_OK = {("ablate.engine.train", "_foreach_norm")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_stay_in_their_module(module):
    """No module reaches into another object's private attributes (Optuna's included), except the
    storage module that must; `self._x` and `cls._x` are the object's own."""
    if module in PRIVATE_OK:
        return
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (module, node.attr) in TORCH_PRIVATE_OK:
                continue
            bad.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ablate"):
            bad += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__" and any(p.startswith("_") for p in node.module.split(".")):
            bad.append(f"line {node.lineno}: imports from private module {node.module}")
    assert not bad, f"{module}: {bad}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_subpackage_declares_its_public_surface(package):
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8"))
    names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    assert "__all__" in names, f"ablate.{package} has no __all__"


def test_the_layer_check_finds_a_violation(tmp_path):
    """The checks above can fail: an engine module importing Optuna lazily is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import optuna\n    from ablate.runs import runner\n    return runner._private\n")
    assert "optuna" in {i.split(".")[0] for i in imports(bad, "ablate.engine.bad")}
    assert "ablate.runs.runner" in imports(bad, "ablate.engine.bad")


FUNCTION_LINES = 80


def test_no_function_is_longer_than_a_screen():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
