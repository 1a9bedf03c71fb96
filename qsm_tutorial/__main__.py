"""``python -m qsm_tutorial`` and the console commands ``qsm-train`` and ``qsm-sweep``.

Their modules (torch, MuJoCo, Ray) load inside :func:`start`, after Python has started, so a Ctrl-C
while they load ends in one line instead of Python's traceback of the import machinery.
"""

import importlib
import signal
import sys


def start(module: str) -> int:
    """Import ``module`` and run its ``main()``; exit status 130 if interrupted while importing.

    The interrupt is also remembered by our own SIGINT handler, so a library that swallows the
    KeyboardInterrupt while it loads (C extensions can clear the error) cannot turn a Ctrl-C into a
    full training run."""
    interrupts = []

    def remember_and_raise(signum, frame):
        interrupts.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, remember_and_raise)
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        interrupts.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupts:
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
