#!/usr/bin/env bash
# Re-create the bundled shapes-world demo model from nothing with this package's own pipeline:
# synthetic shapes world -> stage 0 (open_clip CLIP pretraining) -> stage 1 (SAM2CLIP) ->
# stage 2 (CLIP2SAM + decoder) -> evaluation on held-out scenes. Fails if a stage does not
# improve its own metric. Work files go to runs/shapes (git-ignored).
#
#   bash tools/train_demo_model.sh                 # the bundled model (see README for the time)
#   bash tools/train_demo_model.sh --install       # ... and copy it into ovsam_ros/data/models/
#   bash tools/train_demo_model.sh --quick --out /tmp/q   # every stage at a reduced size (CI)
#
# Other options: python -m training.demo_model --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OVSAM_VENV:-$ROOT/.venv}"

bash "$ROOT/tools/setup.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m training.demo_model "$@"
