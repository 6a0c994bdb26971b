"""The package's layers, as README.md's "How the code is laid out" draws them: every import,
at the top of a module or inside a function, goes to the module's own layer or one below it.
A new module must be given its layer here."""

import ast
from pathlib import Path

from conftest import ROOT

# Lowest first; a name stands for the module and, ending in ".", for the package below it.
LAYERS = [
    ("data", ["binfmtd", "binfmtd.records", "binfmtd.errors", "binfmtd.targets", "binfmtd.trust", "binfmtd.entry",
              "binfmtd.image", "binfmtd.probes", "binfmtd.probes."]),
    ("facts and state", ["binfmtd.facts", "binfmtd.facts.", "binfmtd.state", "binfmtd.state.", "binfmtd.namespaces"]),
    ("settings", ["binfmtd.config"]),
    ("plan and act", ["binfmtd.plan", "binfmtd.act"]),
    ("commands", ["binfmtd.report", "binfmtd.commands", "binfmtd.commands.", "binfmtd.verify", "binfmtd.verify.",
                  "binfmtd.metrics"]),
    ("clients", ["binfmtd.__main__", "binfmtd.cli", "binfmtd.cli.", "binfmtd.daemon", "binfmtd.daemon.",
                 "binfmtd.compat", "binfmtd.compat."]),
]


def layer_of(module: str) -> int:
    for level, (_, names) in enumerate(LAYERS):
        if any(module == n or (n.endswith(".") and module.startswith(n)) for n in names):
            return level
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: give it one")


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "binfmtd").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(source: str) -> set[str]:
    """The binfmtd modules a module's source imports, wherever the import statement stands."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            # `from binfmtd.facts import host`: the submodule is what is imported
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {n for n in names if n == "binfmtd" or n.startswith("binfmtd.")}


MODULES = modules()


def upward_imports(module: str, source: str) -> list[str]:
    return [f"{module} ({LAYERS[layer_of(module)][0]}) imports {name} ({LAYERS[layer_of(name)][0]})"
            for name in sorted(imports(source)) if layer_of(name) > layer_of(module)]


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [line for module, path in sorted(MODULES.items()) for line in upward_imports(module, path.read_text())]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_an_import_up_a_layer_is_found_even_inside_a_function():
    source = "def f():\n    from binfmtd.cli.render import say\n    from binfmtd import records\n"
    assert upward_imports("binfmtd.namespaces", source) == [
        "binfmtd.namespaces (facts and state) imports binfmtd.cli.render (clients)"]


def test_the_readme_names_every_folder_and_top_level_module_of_the_package():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## How the code is laid out"):]
    table = table[:table.index("`tests/` tells")]
    for path in sorted((ROOT / "binfmtd").iterdir()):
        if path.name.startswith("_") or path.name == "py.typed":
            continue
        shown = f"`{path.name}/`" if path.is_dir() else f"`{path.name}`"
        if path.suffix == ".py" or path.is_dir() and (path / "__init__.py").exists():
            assert shown in table, f"README's layout table does not name {shown}"
