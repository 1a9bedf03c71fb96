"""``python -m qsm_tutorial``: the ``qsm-train`` command line (see :mod:`qsm_tutorial.cli`)."""

import sys

from .cli import main

sys.exit(main())
