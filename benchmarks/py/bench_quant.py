"""Runs ``slmops bench quant`` (the code is ``slmops.bench.quant``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.quant import main

sys.exit(main(sys.argv[1:]))
