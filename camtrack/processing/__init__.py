"""User code on the live picture (issue 21): a function named by `--process FILE.py:FUNCTION` (or
handed over by an embedding program) run once per captured frame for every viewer, on a thread of
its own, its drawing encoded once and its data kept with the frame number it belongs to.

- `contract`: what the function receives and may return (`FrameInfo`, `ProcessFunction`, `Outcome`)
- `loading`: a function from a file, reloaded when the file is saved (`FunctionFile`)
- `stage`: the frame feed that runs it (`ProcessingStage`), its faults and figures
- the built-ins, each also a function to call from your own code: `masks` (`apply_masks`, `Masks`:
  applied on the capture thread), `overlay` (`draw_text`, `Overlay`), `motion` (`MotionDetector`),
  and `chain` (`Chain`: them and the user's function as one, run by a `ChainStage`)
"""

from .chain import Chain, ChainStage
from .contract import FrameInfo, ProcessFunction, Result
from .loading import FunctionFile, LoadError, load_function
from .masks import MaskError, Masks, apply_masks
from .motion import MotionDetector
from .overlay import Overlay, draw_text
from .stage import ProcessingStage

__all__ = ["Chain", "ChainStage", "FrameInfo", "FunctionFile", "LoadError", "MaskError", "Masks", "MotionDetector",
           "Overlay", "ProcessFunction", "ProcessingStage", "Result", "apply_masks", "draw_text", "load_function"]
