"""Pure-PyTorch Open-Vocabulary SAM model core (no ROS imports).

``OVSAM`` = frozen open_clip CNN backbone -> SAM2CLIP neck -> SAM prompt
encoder / mask decoder (+ label token), and CLIP2SAM region embeddings for
open-vocabulary recognition. See ``ovsam.py`` for the data flow and
``checkpoints.py`` for the weight formats.
"""

from .backbone import CLIPBackbone, build_backbone, register_tiny_clip_configs
from .build import build_ovsam, load_ovsam
from .checkpoints import (
    build_sam_teacher,
    load_reference_clip2sam,
    load_reference_sam2clip,
    load_sam_decoder,
    load_sam_image_encoder,
    load_sam_iou_scorer,
    save_ovsam,
)
from .clip2sam import CLIP2SAM
from .config import BackboneConfig, CLIP2SAMConfig, DecoderConfig, OVSAMConfig, SAM2CLIPConfig
from .decoder import DecoderOutput, OVSAMDecoder
from .errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from .ovsam import OVSAM, ImageFeatures, masks_to_boxes
from .sam2clip import SAM2CLIP
from .sam_iou import SAMIoUScorer
from .transforms import PIXEL_MEAN, PIXEL_STD, ImageTransform, postprocess_masks

__all__ = [
    "BackboneConfig",
    "CLIP2SAM",
    "CLIP2SAMConfig",
    "CLIPBackbone",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DecoderConfig",
    "DecoderOutput",
    "ImageFeatures",
    "ImageTransform",
    "OVSAM",
    "OVSAMConfig",
    "OVSAMDecoder",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "SAM2CLIP",
    "SAM2CLIPConfig",
    "SAMIoUScorer",
    "UnsafeCheckpointError",
    "build_backbone",
    "build_ovsam",
    "build_sam_teacher",
    "load_ovsam",
    "load_reference_clip2sam",
    "load_reference_sam2clip",
    "load_sam_decoder",
    "load_sam_image_encoder",
    "load_sam_iou_scorer",
    "masks_to_boxes",
    "postprocess_masks",
    "register_tiny_clip_configs",
    "save_ovsam",
]
