"""The package's shape: no import cycles (TYPE_CHECKING imports included), and media/ free of
protocol libraries, read from the source with `ast` rather than by importing it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "camtrack"
#: what camtrack/media must never import: it is what moves, not how it is spoken
PROTOCOL_LIBRARIES = {"aiohttp", "aiortc", "aioice", "prometheus_client"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute, anywhere in the file (TYPE_CHECKING blocks too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from . import x` and `from .pkg import mod` name modules too
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_package_has_no_import_cycle() -> None:
    edges = graph()
    # a package's __init__ importing its own modules is how packages work, not a cycle
    for name in edges:
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(edges[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert len(done) > 30  # the walk saw the whole package


def test_media_imports_no_protocol_library() -> None:
    for path in (PACKAGE / "media").rglob("*.py"):
        used = {m.split(".")[0] for m in imports(path)} & PROTOCOL_LIBRARIES
        assert not used, f"{path.relative_to(PACKAGE.parent)} imports {sorted(used)}"
        # nor the rest of camtrack: media is the leaf every other part builds on
        inner = {m for m in imports(path) if m.startswith("camtrack.") and not m.startswith("camtrack.media")}
        assert not inner, f"{path.relative_to(PACKAGE.parent)} imports {sorted(inner)}"


def test_a_cycle_would_be_found() -> None:
    """The walk above is not vacuous: the relative-import resolution sees real edges."""
    edges = graph()
    assert "camtrack.media.ring" in edges["camtrack.media.stage"]
    assert "camtrack.cameras" in edges["camtrack.outputs.webrtc.tracks"]
    assert "camtrack.media.feeds" in edges["camtrack.outputs.mjpeg"]
