"""The built-ins and the user's function as one processing function, run by one stage.

    motion (reads the frame as captured) ─► user's function ─► overlay (drawn on top)

Masks are not in it: they are applied on the capture thread (camtrack.processing.masks). Motion
runs first so that it reads the picture as the camera took it, before the user's function or the
overlay draw on it; its data comes after the user's in the merged result.

The data of one frame:
- no motion detector: what the user's function returned, as it returned it;
- with it: a dict, `{"motion": {...}}` plus the user's data: a dict returned by the user's function
  is the base (its keys win: a "motion" key of its own is kept), anything else it returned (a list,
  a number, a string) goes under "data": `{"data": [...], "motion": {...}}`.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np

from ..media.feeds import FrameFeed
from .contract import FrameInfo, ProcessFunction, interpret
from .loading import FunctionFile, describe_function
from .motion import MotionDetector
from .overlay import Overlay
from .stage import ProcessingStage


def merge(user: Any, has_user: bool, motion: dict[str, Any] | None) -> tuple[bool, Any]:
    """Whether a frame has data, and the data: the user's (as `has_user` says) and motion's."""
    if motion is None:
        return has_user, user
    if not has_user:
        return True, {"motion": motion}
    if isinstance(user, dict):
        return True, {"motion": motion, **user}
    return True, {"data": user, "motion": motion}


class Chain:
    """A processing function made of the user's (or none), a motion detector and an overlay (each
    optional), in the order of the module's docstring."""

    def __init__(self, user: ProcessFunction | None = None, motion: MotionDetector | None = None,
                 overlay: Overlay | None = None) -> None:
        self.user = user
        self.motion = motion
        self.overlay = overlay

    @property
    def file(self) -> FunctionFile | None:
        """The user's function file (reloaded on save), if the user's function is one."""
        return self.user if isinstance(self.user, FunctionFile) else None

    @property
    def description(self) -> str:
        parts = [] if self.user is None else [describe_function(self.user)]
        parts += [name for name, part in (("motion", self.motion), ("overlay", self.overlay)) if part is not None]
        return " + ".join(parts)

    def __call__(self, frame: np.ndarray, info: FrameInfo) -> Any:
        motion = self.motion.detect(frame) if self.motion is not None else None
        picture, drawn, has_data, data = frame, False, False, None
        if self.user is not None:
            outcome = interpret(self.user(frame, info), frame.shape)  # (BadReturn: the stage says it)
            has_data, data = outcome.has_data, outcome.data
            if outcome.picture is not None:
                picture, drawn = outcome.picture, True
                if self.overlay is not None and picture is not frame:
                    picture = picture.copy()  # (the overlay must not draw on an array the user's code keeps)
        if self.overlay is not None:
            self.overlay(picture, info)
            drawn = True
        has_data, data = merge(data, has_data, motion)
        if drawn:
            # (said explicitly, even when drawn in place: the stage then knows the picture changed)
            return (picture, data) if has_data else picture
        # (the user's function may still have drawn in place: the contract's None or data alone)
        return data if has_data else None


class ChainStage(ProcessingStage):
    """The processing stage of a `Chain`: the user's function file in it is reloaded on save while
    the stage runs, as a lone function file's is."""

    def __init__(self, input: FrameFeed, camera: str, chain: Chain, timeout: float, fps: float | None = None,
                 shown: bool = True) -> None:
        super().__init__(input, camera, chain, timeout, fps, shown)
        self.chain = chain

    @property
    def description(self) -> str:
        return self.chain.description

    @property
    def reload_error(self) -> str | None:
        file = self.chain.file
        return file.reload_error if file is not None else None

    async def _run(self, executor: concurrent.futures.Executor) -> None:
        file = self.chain.file
        if file is not None:
            file.watch()
        try:
            await super()._run(executor)
        finally:
            if file is not None:
                file.unwatch()
