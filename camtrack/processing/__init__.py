"""User code on the live picture (issue 21): a function named by `--process FILE.py:FUNCTION` (or
handed over by an embedding program) run once per captured frame for every viewer, on a thread of
its own, its drawing encoded once and its data kept with the frame number it belongs to.

- `contract`: what the function receives and may return (`FrameInfo`, `ProcessFunction`, `Outcome`)
- `loading`: a function from a file, reloaded when the file is saved (`FunctionFile`)
- `stage`: the frame feed that runs it (`ProcessingStage`), its faults and figures
"""

from .contract import FrameInfo, ProcessFunction, Result
from .loading import FunctionFile, LoadError, load_function
from .stage import ProcessingStage

__all__ = ["FrameInfo", "FunctionFile", "LoadError", "ProcessFunction", "ProcessingStage", "Result", "load_function"]
