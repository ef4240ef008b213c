"""Runs ``slmops bench distill`` (the code is ``slmops.bench.distill``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.distill import main

sys.exit(main(sys.argv[1:]))
