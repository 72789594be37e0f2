"""A tiny random-init predictor shared by the predictor tests (CPU, no weights)."""

import numpy as np
import pytest

from ovsam_ros.predictor import OVSAMPredictor

from predictor_helpers import tiny_model


@pytest.fixture(scope="session")
def predictor() -> OVSAMPredictor:
    """Shared predictor with the COCO vocabulary. Tests that change its state must restore it."""
    return OVSAMPredictor(tiny_model(), vocabulary="coco", top_k=3)


@pytest.fixture
def image() -> np.ndarray:
    """A non-square RGB frame (300 x 500)."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60, (300, 500, 3), dtype=np.uint8)
    frame[80:200, 150:320] = (200, 40, 40)
    return frame
