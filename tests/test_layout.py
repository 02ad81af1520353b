"""The layout the README's code map promises: imports flow one way (no circles, lazy imports included), only
`vqclip/cli/` prints or exits, and the step functions live in files named for them."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vqclip"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict) -> set[str]:
    """Every vqclip module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != "vqclip"}
    return found


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    state, cycle = {}, []

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycle.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycle, cycle


def test_lower_layers_never_import_the_cli_or_the_pipeline():
    modules = _modules()
    for name, path in modules.items():
        imported = _imports(path, modules)
        if not name.startswith(("vqclip.cli", "vqclip.pipeline", "vqclip.bench", "vqclip.__main__")):
            assert not {m for m in imported if m.startswith("vqclip.cli")}, name
        if name.startswith(("vqclip.weights", "vqclip.models")) or name in ("vqclip.optimize", "vqclip.guidance"):
            assert not {m for m in imported if m.startswith("vqclip.pipeline")}, name


def test_only_the_cli_prints_or_exits():
    for name, path in _modules().items():
        if name.startswith("vqclip.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    called = func.id
                elif isinstance(func, ast.Attribute):
                    called = f"{getattr(func.value, 'id', '')}.{func.attr}"
                else:
                    continue
                assert called not in ("print", "exit", "quit", "sys.exit", "os._exit"), (name, node.lineno)


def test_the_steps_live_in_files_named_for_them():
    import vqclip.pipeline.load as load
    import vqclip.pipeline.prepare as prepare
    import vqclip.pipeline.run as run
    import vqclip.pipeline.validate as validate
    import vqclip.pipeline.write as write

    for module, step in ((validate, "validate"), (load, "load_models"), (prepare, "prepare"), (run, "run")):
        assert getattr(module, step).__module__ == module.__name__
    assert write.write.__module__ == "vqclip.pipeline.write"
