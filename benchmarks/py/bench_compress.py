"""Runs ``slmops bench compress`` (the code is ``slmops.bench.compress``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.compress import main

sys.exit(main(sys.argv[1:]))
