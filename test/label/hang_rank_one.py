"""``torchrun ... -m hang_rank_one ARGS``: ovsam-label where rank 1 hangs in its first shard (a stuck
GPU, a lost mount) instead of dying; torchrun does not stop a rank that hangs."""

import os
import time

import training.label.runner as runner

if os.environ.get("RANK") == "1":
    def _hang(*args, **kwargs):
        while True:
            time.sleep(60)

    runner.label_shard = _hang

from training.label.cli import main  # noqa: E402

raise SystemExit(main())
