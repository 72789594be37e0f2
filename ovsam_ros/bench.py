"""``python -m ovsam_ros.bench``: the benchmark command (same as ``ovsam bench``).

Everything lives in :mod:`ovsam_ros.benchmark`; this module is the short entry point.
"""

import sys

from ovsam_ros.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
