"""``python -m qsm_tutorial`` and the console commands ``qsm-train`` and ``qsm-sweep``.

Their modules (torch, MuJoCo, Ray) load inside :func:`start`, after Python has started, so a Ctrl-C
while they load ends in one line instead of Python's traceback of the import machinery.
"""

import importlib
import sys


def start(module: str) -> int:
    """Import ``module`` and run its ``main()``; exit status 130 if interrupted while importing."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted while starting, before anything was written", file=sys.stderr)
        return 130
    return main()


def train_main() -> int:
    """``qsm-train`` (:mod:`qsm_tutorial.cli`)."""
    return start("qsm_tutorial.cli")


def sweep_main() -> int:
    """``qsm-sweep`` (:mod:`qsm_tutorial.sweep`)."""
    return start("qsm_tutorial.sweep")


if __name__ == "__main__":
    sys.exit(train_main())
