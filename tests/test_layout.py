"""The package's shape: no import cycles (TYPE_CHECKING imports included), media/ free of
protocol libraries, outputs/ free of the workers and (but for a shrinking list) of the cameras,
read from the source with `ast` rather than by importing it."""

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


#: the outputs that still read camtrack.cameras: none (they read camtrack.outputs.directory's
#: protocols), and it stays empty: a new output reads the cameras through those too
OUTPUTS_READING_CAMERAS: set[str] = set()


def test_outputs_import_neither_the_workers_nor_the_cameras() -> None:
    """The outputs speak to the rest through narrow interfaces: a WebRTC output makes its peers
    with the factory camtrack.app chose (here or in a worker process) and never imports
    camtrack.workers; every output sees the cameras only as camtrack.outputs.directory's `Cameras`
    and `Camera` (a peer, its tracks and its contract as the contract's CameraView), never
    camtrack.cameras: no output does, none is listed as an exception."""
    edges = graph()
    outputs = {name: used for name, used in edges.items() if name.startswith("camtrack.outputs")}
    assert "camtrack.outputs.webrtc.peer" in outputs and "camtrack.outputs.metrics" in outputs
    assert not OUTPUTS_READING_CAMERAS, "no output is an exception any more"
    for name, used in outputs.items():
        workers = sorted(m for m in used if m == "camtrack.workers" or m.startswith("camtrack.workers."))
        assert not workers, f"{name} imports {workers}"
        assert "camtrack.cameras" not in used, f"{name} imports camtrack.cameras"
        assert "camtrack.pipeline" not in used, f"{name} imports camtrack.pipeline"


#: the concrete stages of a camera's pipeline: only its builder (camtrack/pipeline.py) and media/,
#: where they are defined and stack, make them or ask whether a feed is one of them
CONCRETE_STAGES = {"CameraStream", "PassthroughFeed", "PacketDecoder", "SharedEncoder", "BridgedReader"}


def test_only_the_pipeline_builder_knows_the_concrete_stages() -> None:
    """A camera's mode shapes its pipeline in one place: nothing else makes a stream, a passthrough
    feed, a decoder or an encoder, or branches on `isinstance(feed, ...)` of them."""
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "media") or path == PACKAGE / "pipeline.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & CONCRETE_STAGES
            if isinstance(node.func, ast.Name) and node.func.id in CONCRETE_STAGES:
                raise AssertionError(f"{path.relative_to(PACKAGE.parent)} makes a {node.func.id}")
            if isinstance(node.func, ast.Name) and node.func.id == "isinstance" and named:
                raise AssertionError(f"{path.relative_to(PACKAGE.parent)} asks isinstance of {sorted(named)}")


def test_a_cycle_would_be_found() -> None:
    """The walk above is not vacuous: the relative-import resolution sees real edges."""
    edges = graph()
    assert "camtrack.media.ring" in edges["camtrack.media.stage"]
    assert "camtrack.media.feeds" in edges["camtrack.outputs.webrtc.tracks"]
    assert "camtrack.media.feeds" in edges["camtrack.outputs.mjpeg"]


#: the libraries whose private parts camtrack reaches only through camtrack/seams/
SEAMED_LIBRARIES = ("aiortc", "aioice", "aiohttp", "pylibsrtp")
SEAMS = PACKAGE / "seams"
#: camtrack's own private names that other camtrack objects read across objects, whose names a
#: seamed library happens to use too (file, name): each was checked to be camtrack's object
OWN_CROSS_OBJECT = {
    ("camtrack/outputs/mjpeg.py", "_stop"),
    ("camtrack/media/passthrough.py", "_set_state"),
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(paths: list[Path]) -> set[str]:
    """Every private name the files define: functions, classes, attributes they store, names they
    assign, dataclass fields."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if is_private(n)}


def library_private_names() -> set[str]:
    import importlib

    names: set[str] = set()
    for library in SEAMED_LIBRARIES:
        root = Path(importlib.import_module(library).__file__ or "").parent
        names |= defined_private_names(sorted(root.rglob("*.py")))
    return names


def defined_private_names_of(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.AnnAssign, ast.Assign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names.add(target.id)
    return {n for n in names if is_private(n)}


def base_name(node: ast.expr) -> str:
    """The class name a base expression names: `Stage`, `stage.Stage`, `Stage[Frame]`."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def private_uses(relative: str, source: str, own: set[str], theirs: set[str], classes: dict[str, ast.ClassDef]) -> list[str]:
    """Where `source` (the file `relative`) names a private part of a seamed library: a private module or name imported
    from one, a getattr/setattr/hasattr of a private name, `super()._x` or `self._x` not defined by
    camtrack's own class (so inherited from a library's), or `obj._x` that camtrack does not define
    or that a seamed library defines too (`OWN_CROSS_OBJECT` lists camtrack's own such uses)."""
    tree = ast.parse(source)
    found: list[str] = []
    # the class each node is in, and the modules the file imports by name
    enclosing: dict[ast.AST, ast.ClassDef] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if node is not cls:
                enclosing[node] = cls  # (ast.walk goes outer first: an inner class overwrites)
    other_modules = set()
    #: names the file binds to a seamed library's modules and classes
    library_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = (alias.asname or alias.name).split(".")[0]
                if alias.name.split(".")[0] not in SEAMED_LIBRARIES:
                    other_modules.add(bound)
                else:
                    library_names.add(bound)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if parts[0] in SEAMED_LIBRARIES:
                library_names.update(alias.asname or alias.name for alias in node.names)
                if any(is_private(p) for p in parts) or any(is_private(a.name) for a in node.names):
                    found.append(f"{relative}:{node.lineno} imports a private part of {node.module}")
            else:
                other_modules.update(alias.asname or alias.name for alias in node.names)
    # a class of a seamed library's subclassed here: its private methods are not to be overridden
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        roots = set()
        for base in cls.bases:
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                roots.add(base.id)
        if roots & library_names:
            for item in cls.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_private(item.name) \
                        and item.name in theirs:
                    found.append(f"{relative}:{item.lineno} overrides {cls.name}.{item.name} of a seamed library")

    def own_in_class(cls: ast.ClassDef | None, name: str) -> bool:
        seen: set[str] = set()
        while cls is not None and cls.name not in seen:
            seen.add(cls.name)
            if name in defined_private_names_of(cls):
                return True
            cls = next((classes[b] for b in map(base_name, cls.bases) if b in classes), None)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and is_private(name.value):
                found.append(f"{relative}:{node.lineno} {node.func.id}(..., {name.value!r})")
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        name, receiver = node.attr, node.value
        where = f"{relative}:{node.lineno} .{name}"
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) and receiver.func.id == "super":
            cls = enclosing.get(node)
            bases = [classes[b] for b in map(base_name, cls.bases) if b in classes] if cls is not None else []
            if not any(own_in_class(base, name) for base in bases):
                found.append(f"{where}: not defined by a camtrack base class (a library's)")
            continue
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            if not own_in_class(enclosing.get(node), name) and (name not in own or name in theirs):
                found.append(f"{where}: not defined by camtrack's class (a library's, inherited)")
            continue
        root = receiver
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in other_modules and root is receiver:
            continue  # os._exit, argparse._ArgumentGroup: not a seamed library
        if name not in own or (name in theirs and (relative, name) not in OWN_CROSS_OBJECT):
            found.append(f"{where}: a private name of {'/'.join(SEAMED_LIBRARIES)}")
    return found


def test_only_the_seams_name_private_parts_of_aiortc_aioice_aiohttp_pylibsrtp() -> None:
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if SEAMS not in p.parents]
    own = defined_private_names(outside)
    theirs = library_private_names()
    classes: dict[str, ast.ClassDef] = {}
    for path in outside:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node
    found = [use for path in outside
             for use in private_uses(path.relative_to(PACKAGE.parent).as_posix(), path.read_text(), own, theirs, classes)]
    assert not found, "use camtrack/seams/ for these:\n" + "\n".join(found)
    assert (SEAMS / "aiortc.py").exists() and (SEAMS / "aioice.py").exists()


def test_the_private_check_finds_what_it_should() -> None:
    """The check above is not vacuous: each kind of reach into a library is found."""
    source = '''
import os
from aiohttp.web_protocol import RequestHandler
from pylibsrtp._binding import ffi

class Handler(RequestHandler):
    def __init__(self):
        self._mine = 1

    def abort(self):
        return self._task_handler, self._mine, super()._handle_request

    async def _handle_request(self):
        pass

def f(connection, sender, feed):
    os._exit(0)
    getattr(sender, "_ssrc")
    return connection._nominated, sender._RTCRtpSender__mid, sender._ssrc, feed._own_thing
'''
    theirs = library_private_names()
    assert {"_nominated", "_ssrc", "_task_handler", "_handle_request"} <= theirs
    classes = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)}
    found = private_uses("camtrack/probe.py", source, {"_mine", "_own_thing", "_ssrc"}, theirs, classes)
    text = "\n".join(found)
    for expected in ("imports a private part of pylibsrtp._binding", "._task_handler", "._handle_request: not defined",
                     "overrides Handler._handle_request",
                     "getattr(..., '_ssrc')", "._nominated", "._RTCRtpSender__mid", ".\u005fssrc"):
        assert expected in text, (expected, text)
    assert "._mine" not in text and "._own_thing" not in text and "_exit" not in text
