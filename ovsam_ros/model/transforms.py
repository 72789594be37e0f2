"""Image / prompt / mask bookkeeping between original pixels and model input.

OVSAM (like SAM) resizes the image so its long side is ``image_size``
(``ResizeLongestSide``), normalises with ImageNet mean/std in 0-255 space
and zero-pads bottom/right to a square. Three frames of reference:

* original: the camera image, (H, W);
* input: after resizing, (h, w) = ``get_input_size(H, W)``; prompts and
  boxes given to the model are in this frame;
* padded: (S, S) with S = ``image_size``; the decoder's low-res masks cover it.

Two resize kernels to the same (h, w): ``pil`` (segment_anything's ``ResizeLongestSide``:
PIL bilinear, antialiased when shrinking; what ``SamPredictor`` feeds SAM) and ``cv2``
(``cv2.resize`` INTER_LINEAR, no antialiasing: the OVSAM reference's mmcv ``imrescale``, with
which the published weights were trained and evaluated).

:func:`postprocess_masks` undoes the chain for masks, with exactly the math
of ``segment_anything.modeling.Sam.postprocess_masks``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from segment_anything.utils.transforms import ResizeLongestSide

#: Image resize kernels (see the module doc).
RESIZE_BACKENDS = ("pil", "cv2")

# SAM / OVSAM normalisation (RGB, 0-255 space).
PIXEL_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def postprocess_masks(
    masks: torch.Tensor, image_size: int, input_size: Tuple[int, int], original_size: Tuple[int, int]
) -> torch.Tensor:
    """Low-res logits [..., h, w] -> logits [..., H, W] at the original size.

    Upsample to the padded square, crop the un-padded input region, resize
    to the original size (bilinear, ``align_corners=False``; as SAM).
    """
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : int(input_size[0]), : int(input_size[1])]
    x = F.interpolate(x, (int(original_size[0]), int(original_size[1])), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def _as_float_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class ImageTransform:
    """All resize/normalise/pad bookkeeping for one model input size.

    Methods take the original size explicitly; ``apply_image`` also records
    ``original_size`` / ``input_size`` of the last image as a convenience for
    single-threaded callers (pass sizes explicitly when sharing a transform
    across threads).
    """

    def __init__(
        self,
        image_size: int = 1024,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        resize: str = "pil",
    ) -> None:
        if resize not in RESIZE_BACKENDS:
            raise ValueError(f"resize must be one of {RESIZE_BACKENDS}, got {resize!r}")
        self.resize = resize
        self.image_size = int(image_size)
        self.resizer = ResizeLongestSide(self.image_size)
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    # -- sizes ------------------------------------------------------------------
    def get_input_size(self, original_size: Tuple[int, int]) -> Tuple[int, int]:
        """(H, W) of the resized image before padding."""
        return ResizeLongestSide.get_preprocess_shape(int(original_size[0]), int(original_size[1]), self.image_size)

    def _sizes(self, original_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
        if original_size is None:
            if self.original_size is None:
                raise RuntimeError("original_size not given and no image has been transformed yet")
            return self.original_size
        return int(original_size[0]), int(original_size[1])

    # -- image --------------------------------------------------------------------
    @staticmethod
    def _check_image(image: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 numpy image, got {getattr(image, 'shape', type(image))}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        if channel_order.upper() == "BGR":
            image = image[..., ::-1]
        elif channel_order.upper() != "RGB":
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        return np.ascontiguousarray(image)

    def apply_image(self, image: np.ndarray, channel_order: str = "RGB") -> torch.Tensor:
        """uint8 HxWx3 image -> normalised, padded float tensor [1, 3, S, S]."""
        image = self._check_image(image, channel_order)
        original_size = (int(image.shape[0]), int(image.shape[1]))
        resized = self.resize_image(image)
        x = torch.from_numpy(resized).permute(2, 0, 1).float()
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.image_size - w, 0, self.image_size - h))  # pad after normalising -> zeros
        self.original_size, self.input_size = original_size, (int(h), int(w))
        return x.unsqueeze(0)

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 -> uint8 (h, w, 3) at :meth:`get_input_size`, with this transform's kernel."""
        image = np.ascontiguousarray(image)
        if self.resize == "pil":
            return self.resizer.apply_image(image)
        import cv2

        h, w = self.get_input_size(image.shape[:2])
        if (h, w) == image.shape[:2]:
            return image
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)

    def apply_image_device(self, image: np.ndarray, device: Union[str, torch.device],
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """:meth:`apply_image` on ``device``: the uint8 frame is uploaded once (from a reused
        pinned buffer, non-blocking, on CUDA) and resized, normalised and padded there.

        Same math as :meth:`apply_image`: a bilinear resize, antialiased for ``pil`` (PIL's,
        which ``ResizeLongestSide`` uses) and not for ``cv2`` (INTER_LINEAR), rounded back to
        integer levels; the two differ by at most one level on some pixels (the kernels
        round differently). Returns ``dtype``.
        """
        image = self._check_image(image)
        device = torch.device(device)
        original_size = (int(image.shape[0]), int(image.shape[1]))
        h, w = self.get_input_size(original_size)
        src = torch.from_numpy(image)
        if device.type == "cuda":
            src = self._upload(src, device)
        x = src.to(device).permute(2, 0, 1).unsqueeze(0).float()
        if (h, w) != original_size:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=self.resize == "pil")
            x = x.round_().clamp_(0, 255)  # PIL / cv2 return uint8 levels
        mean, std = self.pixel_mean.to(device), self.pixel_std.to(device)
        x = F.pad((x - mean) / std, (0, self.image_size - w, 0, self.image_size - h))
        self.original_size, self.input_size = original_size, (int(h), int(w))
        return x.to(dtype)

    def _upload(self, src: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Host -> device copy through a pinned buffer kept between frames (no per-frame pinning)."""
        buf, event = getattr(self, "_pinned", (None, None))
        if buf is None or buf.shape != src.shape:
            buf, event = torch.empty(src.shape, dtype=src.dtype, pin_memory=True), None
        if event is not None:
            event.synchronize()  # the previous frame's copy must have left the buffer
        buf.copy_(src)
        out = buf.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._pinned = (buf, event)
        return out

    # -- prompts: original -> input --------------------------------------------------
    def apply_coords(self, coords: ArrayLike, original_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """xy points [..., 2] in original pixels -> input pixels (float tensor)."""
        return self.resizer.apply_coords_torch(_as_float_tensor(coords), self._sizes(original_size))

    def apply_boxes(self, boxes: ArrayLike, original_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """xyxy boxes [N, 4] in original pixels -> input pixels."""
        return self.resizer.apply_boxes_torch(_as_float_tensor(boxes).reshape(-1, 4), self._sizes(original_size))

    # -- results: input -> original ----------------------------------------------------
    def coords_to_original(self, coords: torch.Tensor, original_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Inverse of :meth:`apply_coords` (e.g. for boxes of predicted masks)."""
        oh, ow = self._sizes(original_size)
        h, w = self.get_input_size((oh, ow))
        out = coords.to(torch.float32).clone()
        out[..., 0] = out[..., 0] * (ow / w)
        out[..., 1] = out[..., 1] * (oh / h)
        return out

    def boxes_to_original(self, boxes: torch.Tensor, original_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Inverse of :meth:`apply_boxes`; keeps the leading dimensions."""
        return self.coords_to_original(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size).reshape(boxes.shape)

    def postprocess_masks(self, masks: torch.Tensor, original_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Low-res (or padded-size) logits [..., h, w] -> logits at the original size."""
        size = self._sizes(original_size)
        return postprocess_masks(masks, self.image_size, self.get_input_size(size), size)
