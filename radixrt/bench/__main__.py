"""`python -m radixrt.bench`: see radixrt/bench/cli.py."""

from __future__ import annotations

import sys

from radixrt.bench.cli import main

sys.exit(main())
