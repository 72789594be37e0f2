"""OVSAM training pipeline: stage 1 (SAM2CLIP distillation), stage 2 (CLIP2SAM + decoder), evaluation.

Modules: ``data`` (COCO-format instances, image folders, class folders, rosbag2 extraction),
``synthetic`` (CPU-sized synthetic dataset), ``losses``, ``engine`` (the shared DDP-capable,
exactly resumable training loop), ``stage1``, ``stage2``, ``evaluate``, ``config``.
Console entry points: ovsam-train-stage1, ovsam-train-stage2, ovsam-evaluate,
ovsam-extract-bag, ovsam-make-synthetic.
"""
