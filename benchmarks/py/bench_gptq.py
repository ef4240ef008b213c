"""Runs ``slmops bench gptq`` (the code is ``slmops.bench.gptq``, so an installed
slmops carries its benchmarks); the options are the same."""

import sys

from slmops.bench.gptq import main

sys.exit(main(sys.argv[1:]))
