"""p2p_dist: fast, distributed pix2pix (Cityscapes label maps -> photos)."""

import os

# OpenMP threads that spin while waiting steal the cores DALI's decoding threads (and other ranks) need:
# on 2 shared cores a training step measured 5x slower with the default spinning than with passive waits.
# Set before torch loads its OpenMP runtime; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
