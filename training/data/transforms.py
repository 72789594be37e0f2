"""Geometric augmentation and model-input preparation (numpy / OpenCV, no torch randomness).

All randomness comes from a ``numpy.random.Generator`` passed in by the
caller (seeded per sample), so a sample is a pure function of its seed.

Coordinates follow the model: images are resized so the long side is
``image_size * scale`` (``scale`` = 1 without jitter), flipped, cropped to at
most ``image_size`` x ``image_size`` and zero-padded bottom/right after
normalisation (exactly like :class:`~ovsam_ros.model.transforms.ImageTransform`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ovsam_ros.model.transforms import PIXEL_MEAN, PIXEL_STD

_MEAN = np.asarray(PIXEL_MEAN, np.float32)
_STD = np.asarray(PIXEL_STD, np.float32)


def _resize(image: np.ndarray, size_wh: Tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    if (image.shape[1], image.shape[0]) == tuple(size_wh):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST_EXACT  # pixel-centre aligned (plain INTER_NEAREST is shifted)
    else:
        shrink = size_wh[0] < image.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(image, size_wh, interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel of size 1
        out = out[:, :, None]
    return out


def resize_masks(masks: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    """[K, H, W] bool -> [K, h, w] bool (nearest; up to 512 masks per OpenCV call)."""
    if masks.shape[0] == 0:
        return np.zeros((0, size_wh[1], size_wh[0]), bool)
    out = []
    for start in range(0, masks.shape[0], 512):
        chunk = np.ascontiguousarray(masks[start:start + 512].transpose(1, 2, 0).astype(np.uint8))
        r = _resize(chunk, size_wh, nearest=True)
        out.append(r.reshape(size_wh[1], size_wh[0], -1).transpose(2, 0, 1))
    return np.concatenate(out, 0).astype(bool)


@dataclass
class Augment:
    """Scale jitter + horizontal flip + random crop to ``image_size`` (reference stage-2 recipe).

    ``scale_range`` multiplies the resize-longest-side scale (reference COCO:
    0.9-2.0, LVIS 0.1-2.0); (1, 1) and ``flip=False`` give the plain
    resize-longest-side of the predictor.
    """

    image_size: int
    scale_range: Tuple[float, float] = (1.0, 1.0)
    flip: bool = False

    def __post_init__(self) -> None:
        lo, hi = float(self.scale_range[0]), float(self.scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        self.scale_range = (lo, hi)

    def params(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """Draw the random parameters (fixed order: scale, flip, crop)."""
        lo, hi = self.scale_range
        jitter = float(rng.uniform(lo, hi)) if hi > lo else lo
        scale = self.image_size / max(height, width) * jitter
        nh, nw = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        flip = bool(rng.random() < 0.5) if self.flip else False
        oy = int(rng.integers(0, nh - self.image_size + 1)) if nh > self.image_size else 0
        ox = int(rng.integers(0, nw - self.image_size + 1)) if nw > self.image_size else 0
        return {"size": (nh, nw), "flip": flip, "offset": (oy, ox)}

    def apply(self, p: dict, image: np.ndarray, masks: Optional[np.ndarray] = None):
        nh, nw = p["size"]
        oy, ox = p["offset"]
        s = self.image_size
        img = _resize(image, (nw, nh))
        if p["flip"]:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img[oy:oy + s, ox:ox + s])
        if masks is None:
            return img, None
        # resize only the rows/columns that survive the crop would be cheaper; masks are small here
        m = resize_masks(masks, (nw, nh))
        if p["flip"]:
            m = m[:, :, ::-1]
        return img, np.ascontiguousarray(m[:, oy:oy + s, ox:ox + s])

    def __call__(self, rng: np.random.Generator, image: np.ndarray, masks: Optional[np.ndarray] = None):
        p = self.params(rng, image.shape[0], image.shape[1])
        img, m = self.apply(p, image, masks)
        return img, m, p


def to_model_input(image: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 RGB (h, w, 3) with h, w <= image_size -> normalised, zero-padded [3, S, S] float32."""
    h, w = image.shape[:2]
    if h > image_size or w > image_size:
        raise ValueError(f"image {w}x{h} larger than the model input {image_size}")
    x = torch.from_numpy(((image.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1).copy())
    return F.pad(x, (0, image_size - w, 0, image_size - h))


def pad_masks(masks: np.ndarray, image_size: int) -> torch.Tensor:
    """[K, h, w] bool -> [K, S, S] uint8 zero-padded."""
    k, h, w = masks.shape
    out = torch.zeros((k, image_size, image_size), dtype=torch.uint8)
    if k:
        out[:, :h, :w] = torch.from_numpy(masks.astype(np.uint8))
    return out


def masks_to_boxes_np(masks: np.ndarray) -> np.ndarray:
    """[K, H, W] bool -> [K, 4] xyxy float32 ([x0, y0, x1 + 1, y1 + 1], the model's convention)."""
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for k, m in enumerate(masks):
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        if ys.size:
            boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def random_points_in_masks(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """One uniformly random foreground pixel (x, y) per mask ([K, 2] float32)."""
    out = np.zeros((masks.shape[0], 2), np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if ys.size:
            j = int(rng.integers(0, ys.size))
            out[k] = (xs[j], ys[j])
    return out


def distance_transform_point(mask: np.ndarray) -> Tuple[float, float]:
    """The pixel (x, y) farthest from the mask boundary (paper's point* evaluation prompt)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)  # the image border counts as boundary
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-4)
    # ties (a plateau, e.g. the mid-line of a rectangle): the tied pixel nearest to their centroid
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[j]), float(ys[j])


#: The kornia release whose ``distance_transform`` the reference evaluation ran (HarborYuan/ovsam was
#: published in January 2024 with an unpinned ``pip install kornia``: 0.7.1, whose function is 0.7.0's).
#: kornia 0.8.2 changed the function's per-step offset (``i * kernel_size // 2`` -> ``i * (kernel_size // 2)``)
#: and 0.9 its arithmetic, which moves the chosen point; requirements.txt pins this release.
REFERENCE_KORNIA = "0.7.1"
_warned_kornia: list = []


def _kornia_distance_transform():
    """kornia's ``distance_transform`` (imported on first use: kornia imports in ~2 s)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # kornia 0.7's torch.cuda.amp decorators
            import kornia
            from kornia.contrib import distance_transform
    except ImportError as err:
        raise ImportError(
            "the reference point rule (ovsam-evaluate --point-rule reference) runs kornia's distance_transform, as "
            f"the reference evaluation does: pip install kornia=={REFERENCE_KORNIA} (requirements.txt), or use "
            "--point-rule centered") from err
    version = str(getattr(kornia, "__version__", "?"))
    if not version.startswith(REFERENCE_KORNIA.rsplit(".", 1)[0] + ".") and not _warned_kornia:
        _warned_kornia.append(version)
        import logging

        logging.getLogger("training").warning(
            "kornia %s is installed; the reference evaluation's distance_transform is kornia %s's (0.8.2 changed "
            "it), so point* prompts may differ from the reference's", version, REFERENCE_KORNIA)
    return distance_transform


def mmcv_rescale_size(old_wh: Tuple[int, int], scale: Tuple[int, int]) -> Tuple[int, int]:
    """(w, h) of mmcv ``imrescale(img, scale)`` for a tuple ``scale``: the largest size within it."""
    w, h = int(old_wh[0]), int(old_wh[1])
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def reference_point(mask: np.ndarray, input_size: Tuple[int, int],
                    device: Union[str, torch.device, None] = None) -> Tuple[float, float]:
    """The reference evaluation's point prompt (``get_center_coords`` of HarborYuan/ovsam), INPUT pixels (x, y).

    The steps of the reference: mmdet's ``BitmapMasks.rescale(img_shape)`` (mmcv ``imrescale``, nearest:
    ``cv2.INTER_NEAREST`` to :func:`mmcv_rescale_size`, which can be one pixel narrower than the image),
    one background pixel of padding, kornia's ``distance_transform`` (kernel 3, h 0.35, its defaults) of
    the inverted mask, then the FIRST maximum in row-major order (torch ``argmax``), in the rescaled
    mask's pixels. An empty rescaled mask gives (0, 0), the reference's argmax of all zeros.

    ``device``: where kornia runs (the predictor's). On CUDA the whole padded mask is transformed, as in
    the reference. On a CPU only the mask's bounding box plus the one-pixel background ring is: every
    pixel outside it is background, a source that the transform leaves at 0 and the window of any pixel
    inside sees as 1 either way, so the values inside are the same (pinned against kornia on the whole
    mask in ``test/training/test_point_rule.py``) at a fraction of the cost.
    """
    import cv2

    distance_transform = _kornia_distance_transform()
    h, w = int(input_size[0]), int(input_size[1])
    oh, ow = mask.shape[:2]
    size_wh = mmcv_rescale_size((ow, oh), (h, w))
    resized = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), size_wh, interpolation=cv2.INTER_NEAREST)
    rows, cols = np.flatnonzero(resized.any(axis=1)), np.flatnonzero(resized.any(axis=0))
    if rows.size == 0:
        return 0.0, 0.0
    dev = torch.device(device) if device is not None else torch.device("cpu")
    y0, x0 = (int(rows[0]), int(cols[0])) if dev.type == "cpu" else (0, 0)
    y1, x1 = (int(rows[-1]) + 1, int(cols[-1]) + 1) if dev.type == "cpu" else resized.shape
    region = torch.from_numpy(resized[y0:y1, x0:x1].astype(bool)).to(dev)[None, None]
    dist = distance_transform((~F.pad(region, (1, 1, 1, 1), mode="constant", value=False)).float())
    dist = dist[0, 0, 1:-1, 1:-1]
    flat = int(dist.flatten().argmax())  # torch: the first maximum, row-major
    return float(x0 + flat % dist.shape[1]), float(y0 + flat // dist.shape[1])


def exact_edt_point(mask: np.ndarray, input_size: Tuple[int, int]) -> Tuple[float, float]:
    """The point rule before kornia (kept to measure the change, ``ovsam_ros.benchmark.fidelity point-rule``):
    the reference's steps with OpenCV's exact Euclidean distance transform instead of kornia's."""
    import cv2

    h, w = int(input_size[0]), int(input_size[1])
    resized = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    dist = cv2.distanceTransform(np.pad(resized, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    flat = int(np.argmax(dist))
    return float(flat % w), float(flat // w)


#: How many of N prompts are boxes: ``round`` (ours: exactly round(N x box_fraction), 20 of 40) or
#: ``reference`` (the reference's stage-2 preprocessor: ``arange(2).repeat_interleave(N // 2 + 1)[:N]``
#: over the shuffled instances, 0 = box: N // 2 + 1 boxes, 21 of 40; box_fraction must be 0.5).
BOX_COUNT_RULES = ("round", "reference")


def sample_prompt_kinds(rng: np.random.Generator, count: int, box_fraction: float, rule: str = "round") -> np.ndarray:
    """[count] bool, True = box prompt, at random positions; how many by ``rule`` (:data:`BOX_COUNT_RULES`)."""
    if rule == "round":
        n_box = int(round(count * box_fraction))
    elif rule == "reference":
        if box_fraction != 0.5:
            raise ValueError(f"the reference's box count splits prompts in half; box_fraction must be 0.5, got {box_fraction}")
        n_box = min(count, count // 2 + 1)
    else:
        raise ValueError(f"box count rule must be one of {BOX_COUNT_RULES}, got {rule!r}")
    kinds = np.zeros(count, bool)
    if count:
        kinds[rng.permutation(count)[:n_box]] = True
    return kinds


__all__: Sequence[str] = [
    "Augment",
    "BOX_COUNT_RULES",
    "distance_transform_point",
    "exact_edt_point",
    "mmcv_rescale_size",
    "reference_point",
    "masks_to_boxes_np",
    "pad_masks",
    "random_points_in_masks",
    "resize_masks",
    "sample_prompt_kinds",
    "to_model_input",
]
