"""A processing function from a file (`--process path/to/file.py:function`), and its reloading: a
thread polls the file's modification time and loads it again when it changes, keeping the previous
version when the new one fails to load."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .contract import FrameInfo, ProcessFunction

logger = logging.getLogger(__name__)

#: seconds between two looks at the file's modification time (a save is live within about twice this)
POLL_INTERVAL = 0.5
_serial = itertools.count(1)


class LoadError(ValueError):
    """A processing function's file or name is wrong: the message says what, in one line."""


def parse_spec(spec: str) -> tuple[Path, str]:
    """`path/to/file.py:function` as (path, function name); LoadError when it is not of that form."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise LoadError(f"--process must be FILE.py:FUNCTION, not {spec!r}")
    return Path(path), name


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


def _where(exc: BaseException, path: Path) -> str:
    """The line of `path` an exception came from, as ' (line N)', if it says."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f" (line {lines[-1]})" if lines else ""


def load_function(path: Path, name: str) -> ProcessFunction:
    """Import `path` as a module of its own (each call a fresh one, its own globals) and return its
    callable `name`; LoadError with one line saying why not. The file's folder is on `sys.path`
    while it is imported, so that it can import its neighbours."""
    if not path.is_file():
        raise LoadError(f"process file {str(path)!r} is not a file")
    module_name = f"camtrack_process_{next(_serial)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"process file {str(path)!r} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - a user's file may raise anything while importing, SystemExit too
        said = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
        message = said.strip().splitlines()[0] if said.strip() else ""
        raise LoadError(f"process file {str(path)!r} failed to import: {type(exc).__name__}"
                        f"{': ' + message if message else ''}{_where(exc, path.resolve())}") from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    function = getattr(module, name, None)
    if function is None:
        raise LoadError(f"process file {str(path)!r} has no function {name!r}")
    if not callable(function):
        raise LoadError(f"{name!r} in process file {str(path)!r} is not a function")
    return function  # type: ignore[no-any-return]


class FunctionFile:
    """A processing function loaded from a file, callable like the function; `watch()` starts a
    thread that reloads it when the file is saved (until `unwatch()`). A reload that fails keeps the
    previous version, logs why, and says it in `reload_error` until a save loads again."""

    def __init__(self, spec: str, interval: float = POLL_INTERVAL) -> None:
        self.spec = spec
        self.path, self.name = parse_spec(spec)
        self.interval = interval
        try:
            self._stamp = _stamp(self.path)
        except OSError as exc:
            raise LoadError(f"cannot read process file {str(self.path)!r}: {exc.strerror or exc}") from None
        self.function = load_function(self.path, self.name)
        #: loads after the first, that worked
        self.reloads = 0
        #: why the newest version of the file failed to load (None once one loads)
        self.reload_error: str | None = None
        self._lock = threading.Lock()
        self._watchers = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return f"{self.path.name}:{self.name}"

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> Any:
        return self.function(frame, info)

    def check(self) -> bool:
        """Load the file again if it changed since the last look; whether a new version is live."""
        try:
            stamp = _stamp(self.path)
        except OSError:
            return False  # (an editor saving by rename: the file is back at the next look)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            function = load_function(self.path, self.name)
        except LoadError as exc:
            self.reload_error = str(exc)
            logger.warning("%s: the new version does not load, keeping the previous one: %s", self.description, exc)
            return False
        self.function = function
        self.reloads += 1
        self.reload_error = None
        logger.info("%s: reloaded", self.description)
        return True

    def watch(self) -> None:
        """Reload on save from now on (each `watch` is ended by one `unwatch`)."""
        with self._lock:
            self._watchers += 1
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, args=(self._stop,), daemon=True,
                                            name=f"camtrack reload {self.path.name}")
            self._thread.start()

    def unwatch(self) -> None:
        with self._lock:
            self._watchers = max(0, self._watchers - 1)
            if not self._watchers:
                self._stop.set()
                self._thread = None

    def _poll(self, stop: threading.Event) -> None:
        while True:
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive anything a user's file does
                logger.exception("%s: reloading failed", self.description)
            if stop.wait(self.interval):
                return


def describe_function(function: object) -> str:
    """A processing function as the log names it."""
    if isinstance(function, FunctionFile):
        return function.description
    name = getattr(function, "__qualname__", None) or type(function).__name__
    module = getattr(function, "__module__", None)
    return f"{module}.{name}" if module else str(name)


