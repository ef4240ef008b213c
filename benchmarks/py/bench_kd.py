"""Runs ``slmops bench kd`` (the code is ``slmops.bench.kd``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.kd import main

sys.exit(main(sys.argv[1:]))
