"""``python -m qsm_tutorial``: the ``qsm-train`` command line (see :mod:`qsm_tutorial.train`)."""

import sys

from .train import main

sys.exit(main())
