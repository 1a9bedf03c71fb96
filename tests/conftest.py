import os

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# The suite runs on two xdist workers on a 2-core machine: one torch thread each avoids
# oversubscription, which slows the many tiny tensor ops of these tests by an order of magnitude.
torch.set_num_threads(1)
