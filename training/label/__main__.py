"""``python -m training.label`` (and ``torchrun ... -m training.label``)."""

from .cli import main

raise SystemExit(main())
