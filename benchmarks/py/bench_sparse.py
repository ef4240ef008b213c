"""Runs ``slmops bench sparse`` (the code is ``slmops.bench.sparse``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.sparse import main

sys.exit(main(sys.argv[1:]))
