"""Evaluation metrics for generated photos: SSIM, PSNR, MSE, L1, FID, KID and the FCN-score.

Conventions (all inputs are float images in [-1, 1], as the generator produces them):

- SSIM, PSNR, MSE and L1 are computed on images mapped to [0, 1] (``(x + 1) / 2``), with data_range 1.
  SSIM (11x11 Gaussian window, sigma 1.5) and PSNR are per image, averaged over images; MSE and L1 are
  means over every pixel and channel of the split.
- FCN-score: a segmenter trained on real photos labels the generated photos; its predictions are scored
  against the input label map with ONE confusion matrix over the whole split (19 train ids, pixels whose
  label is ``IGNORE_INDEX`` skipped):

  * ``pixel_acc``  = correct pixels / labelled pixels
  * ``class_acc``  = mean over classes PRESENT IN THE LABELS of (correct pixels of c / labelled pixels of c)
  * ``mean_iou``   = mean over classes present in the labels OR the predictions of TP / (TP + FP + FN)

  A class absent from both is left out of the means (its score is 0/0). This DIFFERS from the FCN evaluation
  code behind the pix2pix paper's numbers (pytorch-CycleGAN-and-pix2pix, scripts/eval_cityscapes/util.py,
  from clockwork-fcn): it divides by ``count + 1e-12``, so an absent class scores 0, never NaN, and its
  ``nanmean`` averages over all 19 classes with the absent ones counted as 0. On full Cityscapes val every
  class occurs and the two agree; on a set where some never occur (four of the demo scenes' 19) p2p_dist's
  means are over the classes present, the reference's would be lower by the share of absent classes.
  A class only predicted counts with IoU 0; it has no accuracy (no labelled pixel) so it does not enter
  ``class_acc`` (the reference counts its accuracy as 0 too).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from p2p_dist.data.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, to_train_ids
from p2p_dist.eval.fid import INCEPTION_FEATURES, InceptionMetrics
from p2p_dist.models import to_unit_range

FCN_KEYS = ("fcn/pixel_acc", "fcn/class_acc", "fcn/mean_iou")
CEILING_PREFIX = "ceiling/"


def build_confusion_matrix(device: torch.device | str = "cpu", *, sync: bool = True) -> MulticlassConfusionMatrix:
    """Confusion matrix over the 19 train ids; rows are labels, columns predictions; label 255 skipped.
    ``compute()`` sums it over all ranks of the process group unless ``sync=False``."""
    return MulticlassConfusionMatrix(num_classes=NUM_TRAIN_CLASSES, ignore_index=IGNORE_INDEX, sync_on_compute=sync).to(
        device
    )


def fcn_scores(confusion: Tensor) -> dict[str, float]:
    """Pixel accuracy, mean class accuracy and mean IoU from a (C, C) confusion matrix (rows = labels).

    See the module docstring for which classes enter the means. Returns NaN scores when no pixel is
    labelled at all.
    """
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    labelled = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    union = labelled + predicted - true_positives
    present_in_labels = labelled > 0
    present_anywhere = union > 0
    nan = float("nan")
    return {
        "fcn/pixel_acc": float(true_positives.sum() / labelled.sum()) if labelled.sum() > 0 else nan,
        "fcn/class_acc": float((true_positives[present_in_labels] / labelled[present_in_labels]).mean())
        if present_in_labels.any()
        else nan,
        "fcn/mean_iou": float((true_positives[present_anywhere] / union[present_anywhere]).mean())
        if present_anywhere.any()
        else nan,
    }


Segmenter = Callable[[Tensor], Tensor]
"""Photos (B,3,H,W) in [-1, 1] -> logits (B, 19, h, w) over the train ids."""


@torch.no_grad()
def predict_train_ids(segmenter: Segmenter, photos: Tensor, size: tuple[int, int]) -> Tensor:
    """Segment photos and return (B, H, W) train-id predictions at ``size`` (the label resolution).

    Logits are resized bilinearly before the argmax when the segmenter's output resolution differs from
    the label map's: the FCN-score compares at the label resolution.
    """
    if isinstance(segmenter, nn.Module) and segmenter.training:
        # Batch norm in training mode would score with batch statistics and update its running ones.
        raise ValueError("the segmenter is in training mode: call .eval() before scoring with it")
    logits = segmenter(photos)
    if logits.dim() != 4 or logits.shape[1] != NUM_TRAIN_CLASSES:
        raise ValueError(
            f"segmenter must return (B, {NUM_TRAIN_CLASSES}, H, W) logits, got shape {tuple(logits.shape)}"
        )
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


class Evaluator(nn.Module):
    """Gathers every metric over batches of a split; ``compute()`` syncs across ranks.

    Each rank calls ``update`` on its own share of the split; ``compute()`` (called on EVERY rank) returns
    the metrics over all ranks' images, identical to one process seeing them all. States are torchmetrics
    states, so any initialised ``torch.distributed`` process group works (gloo on CPU, NCCL on GPU).

    Keys of ``compute()``: ``ssim``, ``psnr``, ``mse``, ``l1`` always; ``fid``, ``kid_mean``, ``kid_std`` unless
    ``fid_kid=False`` (Inception is the slow part); ``fcn/pixel_acc``, ``fcn/class_acc``, ``fcn/mean_iou`` unless
    ``fcn=False``; with ``fcn_ceiling=True`` also ``ceiling/fcn/...``, the same segmenter's score on the REAL
    photos of the same samples (the paper's ceiling row). ``inception_feature`` (default 2048, the standard)
    selects the Inception layer of FID/KID;
    see :class:`~p2p_dist.eval.fid.InceptionMetrics`. KID options are documented there too.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        fid_kid: bool = True,
        fcn: bool = True,
        fcn_ceiling: bool = False,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        inception_feature: int = INCEPTION_FEATURES,
        inception_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.mse = MeanSquaredError()
        self.l1 = MeanAbsoluteError()
        self.inception = (
            InceptionMetrics(
                self.device,
                kid_subset_size=kid_subset_size,
                kid_subsets=kid_subsets,
                cache_dir=inception_cache_dir,
                feature=inception_feature,
            )
            if fid_kid
            else None
        )
        self.confusion = build_confusion_matrix() if fcn else None
        self.ceiling_confusion = build_confusion_matrix() if fcn and fcn_ceiling else None
        self.to(self.device)

    @torch.no_grad()
    def update(
        self,
        fake: Tensor,
        real: Tensor,
        ids: Tensor | None = None,
        segmenter: Segmenter | None = None,
        keep: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            fake: generated photos (B,3,H,W) in [-1, 1].
            real: the matching real photos (B,3,H,W) in [-1, 1].
            ids: the input label maps (B,H,W) as Cityscapes label ids 0..33 (what the loader yields); they
                are mapped to train ids here. Only needed for the FCN-score. Images smaller than 11x11
                are rejected by SSIM (its Gaussian window).
            segmenter: photos in [-1, 1] -> (B,19,h,w) logits; required unless built with ``fcn=False``.
            keep: optional (B,) bool mask of the samples to count, e.g. to drop the repeats a loader pads
                its last batches with, which would otherwise be counted twice.
        """
        if fake.shape != real.shape or fake.dim() != 4 or fake.shape[1] != 3:
            raise ValueError(
                f"fake and real must both be (B,3,H,W); got fake {tuple(fake.shape)}, real {tuple(real.shape)}"
            )
        if self.confusion is not None:  # checked first: a failed update must not leave a partial one behind
            if segmenter is None:
                raise ValueError("Evaluator was built with fcn=True: update() needs a segmenter")
            if ids is None or ids.dim() != 3 or ids.shape[0] != fake.shape[0]:
                got = None if ids is None else tuple(ids.shape)
                raise ValueError(f"ids must be (B,H,W) with B={fake.shape[0]}, got {got}")
        if keep is not None:
            if keep.shape != fake.shape[:1]:
                raise ValueError(f"keep must be a ({fake.shape[0]},) mask, got shape {tuple(keep.shape)}")
            if not keep.any():
                return
            fake, real = fake[keep.to(fake.device)], real[keep.to(real.device)]
            ids = ids[keep.to(ids.device)] if ids is not None else None
        # Generators trained channels_last hand over channels_last photos; torchmetrics flattens with view().
        fake = fake.to(self.device, memory_format=torch.contiguous_format)
        real = real.to(self.device, memory_format=torch.contiguous_format)
        fake_unit, real_unit = to_unit_range(fake), to_unit_range(real)
        self.ssim.update(fake_unit, real_unit)
        self.psnr.update(fake_unit, real_unit)
        self.mse.update(fake_unit, real_unit)
        self.l1.update(fake_unit, real_unit)
        if self.inception is not None:
            self.inception.update(real, real=True)
            self.inception.update(fake, real=False)
        if self.confusion is not None:
            train_ids = to_train_ids(ids.to(self.device)).long()
            predictions = predict_train_ids(segmenter, fake, tuple(train_ids.shape[-2:]))
            self.confusion.update(predictions, train_ids)
        if self.ceiling_confusion is not None:
            self.ceiling_confusion.update(predict_train_ids(segmenter, real, tuple(train_ids.shape[-2:])), train_ids)

    def compute(self) -> dict[str, float]:
        """All metrics over every rank's updates, as a flat dict of floats (same on every rank)."""
        results = {
            "ssim": float(self.ssim.compute()),
            "psnr": float(self.psnr.compute()),
            "mse": float(self.mse.compute()),
            "l1": float(self.l1.compute()),
        }
        if self.inception is not None:
            results.update(self.inception.compute())
        if self.confusion is not None:
            results.update(fcn_scores(self.confusion.compute()))
        if self.ceiling_confusion is not None:
            results.update({f"{CEILING_PREFIX}{k}": v for k, v in fcn_scores(self.ceiling_confusion.compute()).items()})
        return results

    def reset(self) -> None:
        for metric in (self.ssim, self.psnr, self.mse, self.l1, self.inception, self.confusion, self.ceiling_confusion):
            if metric is not None:
                metric.reset()
