"""Runs ``slmops bench cuda`` (the code is ``slmops.bench.cuda``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.cuda import main

sys.exit(main(sys.argv[1:]))
