import sys

from ovsam_ros.benchmark.cli import main

sys.exit(main())
