"""Runs ``slmops bench quality`` (the code is ``slmops.bench.quality``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.quality import main

sys.exit(main(sys.argv[1:]))
