"""Runs ``slmops bench qmatmul`` (the code is ``slmops.bench.qmatmul``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.qmatmul import main

sys.exit(main(sys.argv[1:]))
