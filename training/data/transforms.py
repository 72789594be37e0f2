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
from typing import Optional, Sequence, Tuple

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


def reference_point(mask: np.ndarray, input_size: Tuple[int, int]) -> Tuple[float, float]:
    """The reference evaluation's point prompt, in INPUT pixels (x, y).

    As ``get_center_coords`` in HarborYuan/ovsam: the ground-truth mask is first resized
    (nearest) to the model input size ``(h, w)`` (long side = model size), padded by one
    background pixel, distance-transformed, and the FIRST maximum in row-major order is
    taken. The reference uses kornia's convolutional distance transform (an approximation
    of the Euclidean one); this uses OpenCV's exact one, so on near-ties the pixel may differ.
    """
    import cv2

    h, w = int(input_size[0]), int(input_size[1])
    resized = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    padded = np.pad(resized, 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    flat = int(np.argmax(dist))  # numpy's argmax: the first maximum, row-major (like torch's on CPU)
    return float(flat % w), float(flat // w)


def sample_prompt_kinds(rng: np.random.Generator, count: int, box_fraction: float) -> np.ndarray:
    """[count] bool, True = box prompt; exactly round(count * box_fraction) boxes at random positions."""
    n_box = int(round(count * box_fraction))
    kinds = np.zeros(count, bool)
    if count:
        kinds[rng.permutation(count)[:n_box]] = True
    return kinds


__all__: Sequence[str] = [
    "Augment",
    "distance_transform_point",
    "reference_point",
    "masks_to_boxes_np",
    "pad_masks",
    "random_points_in_masks",
    "resize_masks",
    "sample_prompt_kinds",
    "to_model_input",
]
