"""The package's import layers (DESIGN.md §2), checked on the source with `ast`: every import of a promptstep
module (at module level or inside a function) goes to the same or a lower layer, the import graph has no cycle,
nothing but the CLI imports `commands/`, library code never imports `reporting/`, and `--help` loads no torch."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "promptstep"

# Lowest first. A module belongs to the first layer whose prefixes match its dotted name (without "promptstep.").
LAYERS = [
    ("plumbing", ("errors", "files", "config", "runs", "checkpoints", "distributed", "precision", "tracking",
                  "malloc")),
    ("model & data", ("model_specs", "models", "adapters", "anatomy", "tiny", "data")),
    ("core", ("formats", "metrics", "rules", "updates", "evaluate", "prepare", "documents")),
    ("methods", ("meta", "experiments", "analysis", "inject")),
    ("reporting", ("reporting",)),
    ("workflows", ("commands",)),
    ("entry", ("cli", "__main__")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"module promptstep.{module} is in no layer: add it to LAYERS")


def _imports(module: str) -> set[str]:
    """The promptstep modules `module` imports anywhere in its source (relative to the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
                names = [prefix]
            else:
                names = [node.module or ""]
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "promptstep" or not name.startswith("promptstep."):
                if node.__class__ is ast.ImportFrom and node.level and name in MODULES:
                    found.add(name)
                continue
            target = name[len("promptstep."):]
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES if module}


def test_every_module_has_a_layer_and_there_are_at_most_seven():
    assert len(LAYERS) <= 7
    for module in GRAPH:
        _layer(module)


def test_imports_only_go_down_the_layers():
    wrong = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
             for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a)]
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_only_the_cli_imports_commands_and_library_code_never_imports_reporting():
    for module, targets in GRAPH.items():
        if not (module.startswith("commands") or module == "cli"):
            assert not any(t.startswith("commands") for t in targets), module
        if not (module.startswith(("commands", "reporting")) or module == "cli"):
            assert not any(t.startswith("reporting") for t in targets), module
    for module in ("models", "updates"):
        assert not any(t.startswith(("meta", "analysis")) for t in GRAPH[module]), module


def test_help_and_option_errors_load_no_torch():
    code = ("import sys; from promptstep.cli import main\n"
            "for argv in (['eval', '--help'], ['meta-train', '--help'], ['eval', '--no-such', '1'],"
            " ['meta-train', '--data', 'd', '--inner-lr', 'nan'], ['eval', '--name', '../x', '--data', 'd']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(PACKAGE.parent)})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr
