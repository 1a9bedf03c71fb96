"""``qsm_tutorial.train`` and ``python -m qsm_tutorial.train``: the training loop's front door.

The loop lives in :mod:`qsm_tutorial.loop`, run directories in :mod:`qsm_tutorial.storage`, the
``qsm-train`` command line in :mod:`qsm_tutorial.cli`; this module only re-exports them.
"""

import sys
import types

from .cli import main
from .loop import Run, train

__all__ = ["Run", "main", "train"]


class _CallableModule(types.ModuleType):
    """Importing this submodule rebinds ``qsm_tutorial.train`` to it; calling it still trains."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
