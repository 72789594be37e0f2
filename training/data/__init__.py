"""Training data: COCO-format instances, image folders, class folders, rosbag2 extraction."""

from .coco import CocoInstances, ImageRecord, Instance, decode_segmentation, polygon_self_intersects
from .common import DataError, SkipReport, list_images, read_image, sample_seed
from .datasets import (
    ClassFolderDataset,
    ConcatDataset,
    DetectionDataset,
    ImageFolderDataset,
    collate_images,
    collate_instances,
)
from .feature_cache import TeacherFeatureCache
from .sampler import StepBatchSampler, steps_per_epoch

__all__ = [
    "ClassFolderDataset",
    "CocoInstances",
    "ConcatDataset",
    "DataError",
    "DetectionDataset",
    "ImageFolderDataset",
    "ImageRecord",
    "Instance",
    "SkipReport",
    "StepBatchSampler",
    "TeacherFeatureCache",
    "collate_images",
    "collate_instances",
    "decode_segmentation",
    "list_images",
    "polygon_self_intersects",
    "read_image",
    "sample_seed",
    "steps_per_epoch",
]
