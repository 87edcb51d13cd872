"""Where clips live: a directory per camera and day, a JSON sidecar per clip, retention, space.

    DIR/CAMERA/YYYY-MM-DD/HHMMSS.TAG.mp4        the clip (fragmented MP4; UTC date and time of its
                                                first picture, TAG six random hex digits)
    DIR/CAMERA/YYYY-MM-DD/HHMMSS.TAG.mp4.part   the same while it is written (renamed when done;
                                                closed by `load` at the next start after a crash)
    DIR/CAMERA/YYYY-MM-DD/HHMMSS.TAG.json       its sidecar: events, kinds, start, end, protected...
    DIR/CAMERA/YYYY-MM-DD/HHMMSS.TAG.jpg        its thumbnail, made when first asked for

A clip's id is `CAMERA.YYYYMMDDTHHMMSS.TAG`: it names its files and nothing else (checked against
a pattern, so no id reaches outside DIR). Every method but `new_id` and the read-only lookups does
file I/O: call them off the event loop (asyncio.to_thread); the index is guarded by a lock.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fmp4 import Repaired, repair

logger = logging.getLogger(__name__)

ID = re.compile(r"^(?P<camera>[A-Za-z0-9_-]{1,64})\.(?P<day>\d{8})T(?P<time>\d{6})\.(?P<tag>[0-9a-f]{6})$")
MB = 1024 * 1024
#: after the disk filled up, recording resumes once this much more is free (at most a quarter of the
#: file system), so that a disk at its last bytes does not stop and resume every few seconds
RESUME_BYTES = 4 * MB


@dataclass
class Retention:
    #: delete clips older than this many days (0: no age limit)
    max_age_days: float = 0.0
    #: keep the clips of this directory under this many bytes in all (0: no cap)
    max_bytes: int = 0
    #: keep this many bytes free on the directory's file system: the oldest clips go first, and
    #: recording stops while there is still less
    min_free_bytes: int = 256 * MB


@dataclass
class StoreStats:
    deleted: dict[str, int] = field(default_factory=lambda: {"age": 0, "size": 0, "space": 0, "user": 0})
    repaired: int = 0


class Store:
    """The clips under one directory (shared by the cameras recording there)."""

    def __init__(self, root: Path, retention: Retention | None = None) -> None:
        self.root = root
        self.retention = retention or Retention()
        self.stats = StoreStats()
        self._clips: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: None while clips can be written, else why not (the file system is full, read-only...)
        self.problem: str | None = None
        #: the free bytes when a write failed for want of space (None: it did not)
        self._full_at: int | None = None

    # -- ids and paths (no I/O)

    @staticmethod
    def new_id(camera: str, start: float) -> str:
        return f"{camera}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime(start))}.{secrets.token_hex(3)}"

    def path(self, clip_id: str, suffix: str = ".mp4") -> Path:
        """The file of clip `clip_id` with `suffix` (.mp4, .mp4.part, .json, .jpg); ValueError for
        what is not an id."""
        match = ID.match(clip_id)
        if match is None:
            raise ValueError(f"not a clip id: {clip_id[:80]!r}")
        day = match["day"]
        return (self.root / match["camera"] / f"{day[:4]}-{day[4:6]}-{day[6:]}"
                / f"{match['time']}.{match['tag']}{suffix}")

    # -- the index

    def get(self, clip_id: str) -> dict[str, Any] | None:
        with self._lock:
            info = self._clips.get(clip_id)
            return dict(info) if info is not None else None

    def clips(self) -> list[dict[str, Any]]:
        """Every clip's sidecar, oldest first."""
        with self._lock:
            found = [dict(info) for info in self._clips.values()]
        return sorted(found, key=lambda info: (info.get("start") or 0, info["id"]))

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(int(info.get("bytes") or 0) for info in self._clips.values())

    def __len__(self) -> int:
        return len(self._clips)

    # -- file I/O (off the event loop)

    def save(self, info: dict[str, Any]) -> None:
        """Write the clip's sidecar (atomically: a crash leaves the old one or the new one) and
        index it."""
        path = self.path(info["id"], ".json")
        with self._lock:  # (first: the index is this run's truth even when the disk refuses the sidecar)
            self._clips[info["id"]] = dict(info)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        try:
            temporary.write_text(json.dumps(info, indent=1, sort_keys=True))
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, path)

    def note(self, clip_id: str, **changes: Any) -> None:
        """Change the clip's entry in the index only (a clip being written: its bytes and duration so
        far, for the list and the size cap; its sidecar is written when it ends)."""
        with self._lock:
            info = self._clips.get(clip_id)
            if info is not None:
                info.update(changes)

    def update(self, clip_id: str, **changes: Any) -> dict[str, Any] | None:
        info = self.get(clip_id)
        if info is None:
            return None
        info.update(changes)
        self.save(info)
        return info

    def load(self) -> None:
        """Index the clips on disk, closing those a crash left unfinished (`.mp4.part`: cut after
        their last complete fragment, their duration written, renamed `.mp4`)."""
        found: dict[str, dict[str, Any]] = {}
        if not self.root.is_dir():
            return
        for sidecar in sorted(self.root.glob("*/*/*.json")):
            try:
                info = json.loads(sidecar.read_text())
                clip_id = info["id"]
                if self.path(clip_id, ".json") != sidecar:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("recordings: ignoring %s (not a clip's sidecar)", sidecar)
                continue
            part = self.path(clip_id, ".mp4.part")
            if part.exists():
                fixed = self._close(part, clip_id)
                if fixed is None:
                    continue
                info.update(recording=False, bytes=fixed.kept, duration=round(fixed.seconds, 3),
                            end=(info.get("start") or 0) + fixed.seconds, repaired=True)
                logger.info("recordings: closed %s left unfinished by a crash (%.1f s kept, %d bytes cut off)",
                            self.path(clip_id).name, fixed.seconds, fixed.cut)
                try:
                    temporary = sidecar.with_suffix(".json.tmp")
                    temporary.write_text(json.dumps(info, indent=1, sort_keys=True))
                    os.replace(temporary, sidecar)
                except OSError as exc:
                    logger.warning("recordings: cannot rewrite %s: %s", sidecar, exc)
            elif info.get("recording"):
                info["recording"] = False  # (its file was finished; only the sidecar was not)
            if not self.path(clip_id).exists():
                continue
            found[clip_id] = info
        # a crash between a clip's first bytes and its sidecar: the file alone, closed and described
        for part in sorted(self.root.glob("*/*/*.mp4.part")):
            clip_id = self._id_of(part)
            if clip_id is None or clip_id in found:
                continue
            fixed = self._close(part, clip_id)
            if fixed is None:
                continue
            start = float(calendar.timegm(time.strptime(clip_id.split(".")[1], "%Y%m%dT%H%M%S")))
            info = {"id": clip_id, "camera": clip_id.split(".")[0], "start": start, "end": start + fixed.seconds,
                    "events": [], "kinds": [], "protected": False, "recording": False, "bytes": fixed.kept,
                    "duration": round(fixed.seconds, 3), "repaired": True}
            found[clip_id] = info
            try:
                self.path(clip_id, ".json").write_text(json.dumps(info, indent=1, sort_keys=True))
            except OSError as exc:
                logger.warning("recordings: cannot write %s: %s", self.path(clip_id, ".json"), exc)
        with self._lock:
            self._clips = found

    def _close(self, part: Path, clip_id: str) -> Repaired | None:
        """The clip file `part` a crash left unfinished, closed (fmp4.repair) and renamed to the
        clip's `.mp4`: what was kept, or None (logged) if it cannot be."""
        try:
            fixed = repair(part)
            os.replace(part, self.path(clip_id))
        except (OSError, ValueError) as exc:
            logger.warning("recordings: cannot close %s left by a crash: %s", part, exc)
            return None
        self.stats.repaired += 1
        return fixed

    def _id_of(self, part: Path) -> str | None:
        """The id of a clip file `DIR/CAMERA/YYYY-MM-DD/HHMMSS.TAG.mp4.part`, if it is one."""
        day, camera = part.parent.name, part.parent.parent.name
        clip_id = f"{camera}.{day.replace('-', '')}T{part.name.removesuffix('.mp4.part')}"
        return clip_id if ID.match(clip_id) and self.path(clip_id, ".mp4.part") == part else None

    def delete(self, clip_id: str, why: str = "user") -> bool:
        """Remove the clip's files; False if there was no such clip."""
        with self._lock:
            info = self._clips.pop(clip_id, None)
        if info is None:
            return False
        for suffix in (".mp4", ".mp4.part", ".jpg", ".json"):
            try:
                self.path(clip_id, suffix).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("recordings: cannot delete %s: %s", self.path(clip_id, suffix), exc)
        self.stats.deleted[why] = self.stats.deleted.get(why, 0) + 1
        day = self.path(clip_id).parent
        try:
            day.rmdir()  # (the day's last clip: its directory goes too)
        except OSError:
            pass
        return True

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return None

    def enforce(self, now: float | None = None) -> list[str]:
        """Retention: delete the oldest clips (never a protected one, nor one being written) past
        the age limit, past the size cap, and while free space is under the floor. The ids deleted."""
        now = time.time() if now is None else now
        retention = self.retention
        deleted: list[str] = []
        candidates = [info for info in self.clips() if not info.get("protected") and not info.get("recording")]
        if retention.max_age_days > 0:
            horizon = now - retention.max_age_days * 86400
            for info in list(candidates):
                if (info.get("end") or info.get("start") or 0) < horizon and self.delete(info["id"], "age"):
                    deleted.append(info["id"])
                    candidates.remove(info)
        if retention.max_bytes > 0:
            total = self.total_bytes
            for info in list(candidates):
                if total <= retention.max_bytes:
                    break
                if self.delete(info["id"], "size"):
                    deleted.append(info["id"])
                    candidates.remove(info)
                    total -= int(info.get("bytes") or 0)
        if retention.min_free_bytes > 0:
            for info in list(candidates):
                free = self.free_bytes()
                if free is None or free >= retention.min_free_bytes:
                    break
                if self.delete(info["id"], "space"):
                    deleted.append(info["id"])
        for clip_id in deleted:
            logger.info("recordings: deleted %s (retention)", clip_id)
        return deleted

    def mark_full(self) -> None:
        """A write failed for want of space: recording waits for RESUME_BYTES more (see check_space)."""
        self._full_at = self.free_bytes() or 0

    def check_space(self) -> str | None:
        """Why clips cannot be written now (None: they can): the directory cannot be made or
        written, or has less free space than the floor. Sets `problem`."""
        problem: str | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # (a name of this call's own: the recorders sharing this directory probe it at the same time)
            probe = self.root / f".probe-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"
            probe.write_bytes(b"camtrack")
            probe.unlink()
        except OSError as exc:
            problem = f"cannot write in {self.root}: {exc.strerror or exc}"
        if problem is None:
            free = self.free_bytes()
            floor = self.retention.min_free_bytes
            if free is not None and floor and free < floor:
                problem = (f"{self.root} has {free / MB:.1f} MB free, under the floor of {floor / MB:.1f} MB "
                           "(--record-min-free) and no clip left to delete")
            elif free is not None and self._full_at is not None:
                try:
                    margin = min(RESUME_BYTES, shutil.disk_usage(self.root).total // 4)
                except OSError:
                    margin = RESUME_BYTES
                if free < self._full_at + margin:
                    problem = (f"{self.root} is full ({free / MB:.2f} MB free; recording resumes once "
                               f"{margin / MB:.2f} MB more are)")
                else:
                    self._full_at = None
        self.problem = problem
        return problem


def search(stores: list[Store], camera: str | None = None, kind: str | None = None, since: float | None = None,
           until: float | None = None) -> Iterator[dict[str, Any]]:
    """The clips of `stores` matching the filters, newest first (a clip matches a time range when
    it overlaps it)."""
    found: list[dict[str, Any]] = []
    for store in stores:
        for info in store.clips():
            start = info.get("start") or 0
            end = info.get("end") or time.time()
            if camera is not None and info.get("camera") != camera:
                continue
            if kind is not None and kind not in (info.get("kinds") or []):
                continue
            if since is not None and end < since:
                continue
            if until is not None and start > until:
                continue
            found.append(info)
    found.sort(key=lambda info: (info.get("start") or 0, info["id"]), reverse=True)
    return iter(found)
