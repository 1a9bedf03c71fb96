import os
import signal

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# The suite runs on two xdist workers on a 2-core machine: one torch thread each avoids
# oversubscription, which slows the many tiny tensor ops of these tests by an order of magnitude.
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """pytest-xdist's transport (execnet) sends SIGINT to a worker still tearing down 5 s after it was
    told to stop; on a busy machine the worker's final garbage collection can take that long, and the
    suite then ends with a KeyboardInterrupt traceback from a weakref callback. A worker that has
    finished its tests ignores SIGINT from here on."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
