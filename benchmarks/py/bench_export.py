"""Runs ``slmops bench export`` (the code is ``slmops.bench.export``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.export import main

sys.exit(main(sys.argv[1:]))
