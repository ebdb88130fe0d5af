"""Reading ``.pt`` files that may come from elsewhere (a downloaded run directory, a shared segmenter): tensors,
containers and plain values only.

``torch.load(weights_only=False)`` unpickles arbitrary objects, and unpickling an object can call any function
(``__reduce__``): opening such a file runs its author's code. ``weights_only=True`` refuses every type outside
torch's allow-list when it meets its name in the pickle stream, before anything of it is built or called.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from typing import Any

import torch

from p2p_dist.errors import USER_ERRORS, BadFileError

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>")


def load_tensors(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", allow: Iterable = ()) -> Any:
    """``torch.load`` of `path` that rebuilds only tensors, containers, plain values and the types in `allow`.
    Anything else, or a file that is not a readable torch file, raises BadFileError naming the file (one line)."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except USER_ERRORS:
        raise
    except Exception as err:
        refused = _REFUSED_GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused is None:
            raise BadFileError(
                f"{path}: not a readable torch file (truncated, corrupted, or not written by torch.save)"
            ) from None
        name = next(group for group in refused.groups() if group)
        raise BadFileError(
            f"{path}: refused to load: it holds a pickled {name} object, and unpickling objects can "
            f"run code; only tensors and plain values are read from checkpoints"
        ) from None
