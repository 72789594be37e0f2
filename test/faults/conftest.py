"""The fault suite (issue #14): each test feeds one kind of bad input and asserts the exact
behaviour (which error, what was kept, that nothing was lost). Shares the bag helpers of
test/training."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
