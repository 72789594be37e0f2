"""PromptArray / SegmentationPrompt messages <-> :class:`ovsam_ros.prompts.Prompt`, fitted to a frame.

Prompts name the image size they were made for. At each frame the node:

* takes ``0 x 0`` as "this frame" (coordinates used as they are);
* rescales prompts made for another size when the aspect ratio matches within
  :data:`ASPECT_TOLERANCE` (a 1280x720 click on a 640x360 stream);
* rejects them otherwise, with the reason (a click made on another camera's
  image cannot be mapped).

Then each prompt is checked against the frame (:func:`ovsam_ros.prompts.check_prompt`):
NaN coordinates, points off the image and boxes with no area inside it are
rejected one by one, keeping the others and their original ``prompt_index``.

Before any of that, when a message arrives, :func:`check_limits` bounds the work it can
cause (anyone on the DDS domain may publish one): prompts after the first ``max_prompts``
and prompts with more than ``max_prompt_points`` points are rejected with a reason naming
the limit and its parameter; the rest keep their ``prompt_index``. The excess is never
converted, so a 100,000-prompt array costs no more than one at the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ovsam_ros.prompts import Prompt, PromptError, check_prompt
from ovsam_ros.robot.detections import PromptSource

ASPECT_TOLERANCE = 0.01  # relative difference of width/height ratios accepted for rescaling


@dataclass
class PromptSet:
    """Prompts from one PromptArray, in the coordinates of ``source_size``."""

    prompts: list[Prompt]
    source_size: tuple[int, int] = (0, 0)  # (width, height) they were made for; (0, 0) = the frame's
    frame_id: str = ""
    persistent: bool = False
    stamp: int = 0  # ns: the frame they were made for; 0 = the next frame
    sources: Optional[list[Optional[PromptSource]]] = None  # per prompt: the detection it came from
    indices: Optional[list[int]] = None  # per prompt: its prompt_index (default: its position)

    def index_of(self, i: int) -> int:
        return self.indices[i] if self.indices is not None else i

    def source_of(self, prompt_index: int) -> Optional[PromptSource]:
        """The source of the prompt reported as ``prompt_index`` (None: not from a detector)."""
        if not self.sources:
            return None
        position = self.indices.index(prompt_index) if self.indices is not None else prompt_index
        return self.sources[position] if 0 <= position < len(self.sources) else None


@dataclass
class FittedPrompts:
    """Prompts usable on one frame, with their indices in the original PromptArray."""

    prompts: list[Prompt] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # one reason per rejected prompt / set


def prompt_from_msg(msg: Any) -> Prompt:
    """One ``SegmentationPrompt`` -> Prompt (no validation: that needs the frame size)."""
    points = [[float(p.x), float(p.y)] for p in msg.points]
    labels = [int(p.label) for p in msg.points]
    box = [float(msg.box.x_min), float(msg.box.y_min), float(msg.box.x_max), float(msg.box.y_max)] \
        if msg.has_box else None
    return Prompt(points=points or None, point_labels=labels or None, box=box)


def source_from_msg(msg: Any) -> Optional[PromptSource]:
    """A ``SegmentationPrompt``'s detector fields; None when they are all empty."""
    if not (msg.source_id or msg.source_class_id or msg.source_score):
        return None
    return PromptSource(id=msg.source_id, class_id=msg.source_class_id, score=float(msg.source_score))


def prompt_set_from_msg(msg: Any, max_prompts: Optional[int] = None,
                        max_points: Optional[int] = None) -> PromptSet:
    """A PromptArray -> PromptSet; with limits, only the prompts :func:`check_limits` keeps (see
    :func:`limited_prompt_set` for the reasons)."""
    return limited_prompt_set(msg, max_prompts, max_points)[0]


@dataclass
class LimitCheck:
    """Which prompts of one message stay within the limits."""

    keep: list[int] = field(default_factory=list)  # positions in the message, in order
    over: int = 0  # prompts rejected by the limits
    reasons: list[str] = field(default_factory=list)  # one line per kind of excess

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)


def check_limits(points_per_prompt: Sequence[int], total: int, max_prompts: Optional[int],
                 max_points: Optional[int], what: str = "PromptArray") -> LimitCheck:
    """Apply ``max_prompts`` (first ones kept) and ``max_points`` (per prompt) to one message of
    ``total`` prompts; ``points_per_prompt`` needs covering only the first ``max_prompts``."""
    out = LimitCheck()
    limit = total if max_prompts is None else min(total, int(max_prompts))
    if total > limit:
        out.over += total - limit
        out.reasons.append(f"{what} with {total} prompts: prompts {limit}..{total - 1} rejected "
                           f"({total - limit} over max_prompts {limit}; parameter max_prompts)")
    for i in range(limit):
        n = int(points_per_prompt[i])
        if max_points is not None and n > max_points:
            out.over += 1
            out.reasons.append(f"prompt {i}: {n} points > max_prompt_points {max_points} "
                               "(parameter max_prompt_points): rejected")
            continue
        out.keep.append(i)
    return out


def limited_prompt_set(msg: Any, max_prompts: Optional[int] = None,
                       max_points: Optional[int] = None) -> tuple[PromptSet, LimitCheck]:
    """A PromptArray -> (PromptSet of the prompts within the limits, what was rejected and why).
    Prompts past ``max_prompts`` are never converted."""
    head = msg.prompts if max_prompts is None else msg.prompts[:max_prompts]
    check = check_limits([len(p.points) for p in head], len(msg.prompts), max_prompts, max_points)
    kept = [head[i] for i in check.keep]
    sources = [source_from_msg(p) for p in kept]
    prompt_set = PromptSet(
        prompts=[prompt_from_msg(p) for p in kept],
        source_size=(int(msg.image_width), int(msg.image_height)),
        frame_id=msg.header.frame_id,
        persistent=bool(msg.persistent),
        stamp=int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec),
        sources=sources if any(s is not None for s in sources) else None,
        indices=None if check.keep == list(range(len(head))) else list(check.keep),
    )
    return prompt_set, check


def scale_factors(source_size: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) mapping ``source_size`` (w, h) onto a frame of (h, w); raises PromptError if impossible."""
    src_w, src_h = source_size
    height, width = frame_hw
    if src_w == 0 and src_h == 0:
        return 1.0, 1.0
    if src_w == 0 or src_h == 0:
        raise PromptError(f"prompts name an image size of {src_w}x{src_h}: give both sides, or 0x0 for 'this frame'")
    if (src_w, src_h) == (width, height):
        return 1.0, 1.0
    mismatch = abs((width / height) / (src_w / src_h) - 1.0)
    if mismatch > ASPECT_TOLERANCE:
        raise PromptError(
            f"prompts were made for a {src_w}x{src_h} image, the frame is {width}x{height}: aspect ratios "
            f"differ by {mismatch:.1%} (> {ASPECT_TOLERANCE:.0%}), so they cannot be rescaled"
        )
    return width / src_w, height / src_h


def _scaled(prompt: Prompt, sx: float, sy: float) -> Prompt:
    if sx == 1.0 and sy == 1.0:
        return prompt
    points = None if prompt.points is None else (np.asarray(prompt.points, np.float64) * [sx, sy]).tolist()
    box = None if prompt.box is None else (np.asarray(prompt.box, np.float64) * [sx, sy, sx, sy]).tolist()
    return Prompt(points=points, point_labels=prompt.point_labels, box=box, mask_input=prompt.mask_input)


def fit_prompts(prompt_set: PromptSet, frame_hw: tuple[int, int], first_index: int = 0) -> FittedPrompts:
    """Rescale ``prompt_set`` to a frame of ``frame_hw`` = (h, w) and drop the unusable prompts."""
    out = FittedPrompts()
    try:
        sx, sy = scale_factors(prompt_set.source_size, frame_hw)
    except PromptError as error:
        out.rejected.append(str(error))
        return out
    note = "" if (sx, sy) == (1.0, 1.0) else \
        f" (rescaled from {prompt_set.source_size[0]}x{prompt_set.source_size[1]})"
    for i, prompt in enumerate(prompt_set.prompts):
        index = first_index + prompt_set.index_of(i)
        scaled = _scaled(prompt, sx, sy)
        try:
            check_prompt(scaled, frame_hw, index)
        except (PromptError, ValueError) as error:
            out.rejected.append(f"{error}{note}")
            continue
        out.prompts.append(scaled)
        out.indices.append(index)
    return out


def check_finite(prompt_set: PromptSet) -> Optional[str]:
    """Early, frame-independent check (NaN/inf anywhere); the reason, or None."""
    for i, prompt in enumerate(prompt_set.prompts):
        values = list(np.ravel(prompt.points)) if prompt.points is not None else []
        values += list(prompt.box or [])
        if not all(math.isfinite(v) for v in values):
            return f"prompt {i}: coordinates must be finite"
        if prompt.points is None and prompt.box is None:
            return f"prompt {i}: needs at least one point or a box"
    return None


# ----------------------------------------------------------------------------- building messages
def segmentation_prompt_msg(prompt: Prompt, source: Optional[PromptSource] = None) -> Any:
    from ovsam_ros.msg import PromptBox, PromptPoint, SegmentationPrompt

    msg = SegmentationPrompt()
    labels = prompt.point_labels if prompt.point_labels is not None else [1] * len(prompt.points or [])
    msg.points = [PromptPoint(x=float(x), y=float(y), label=int(label))
                  for (x, y), label in zip(prompt.points or [], labels)]
    if prompt.box is not None:
        x0, y0, x1, y1 = (float(v) for v in prompt.box)
        msg.has_box = True
        msg.box = PromptBox(x_min=x0, y_min=y0, x_max=x1, y_max=y1)
    if source is not None:
        msg.source_id, msg.source_class_id = source.id, source.class_id
        msg.source_score = float(source.score) if math.isfinite(source.score) else 0.0
    return msg


def prompt_array_msg(prompts: Sequence[Prompt], image_size: tuple[int, int] = (0, 0), *,
                     persistent: bool = False, frame_id: str = "", stamp: Optional[Any] = None,
                     sources: Optional[Sequence[Optional[PromptSource]]] = None) -> Any:
    """A ``PromptArray`` for ``prompts`` made on an image of ``image_size`` = (width, height).

    ``stamp`` (a ``builtin_interfaces/Time``): the frame they were made for; None = the next frame.
    """
    from ovsam_ros.msg import PromptArray

    msg = PromptArray()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.image_width, msg.image_height = int(image_size[0]), int(image_size[1])
    sources = list(sources) if sources is not None else [None] * len(prompts)
    msg.prompts = [segmentation_prompt_msg(p, s) for p, s in zip(prompts, sources)]
    msg.persistent = persistent
    return msg
