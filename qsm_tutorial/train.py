"""``qsm_tutorial.train`` and ``python -m qsm_tutorial.train``: the training loop's front door.

The loop lives in :mod:`qsm_tutorial.loop`, run directories in :mod:`qsm_tutorial.storage`, the
``qsm-train`` command line in :mod:`qsm_tutorial.cli`; this module only re-exports them.
"""

import sys

from .cli import main
from .loop import Run, train

__all__ = ["Run", "main", "train"]

if __name__ == "__main__":
    sys.exit(main())
