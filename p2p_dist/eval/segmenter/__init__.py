"""The segmenter behind the FCN-score: a compact U-Net trained on REAL photos of the train split.

No public package ships Cityscapes segmentation weights, so the project trains its own (a few minutes on
a CPU for the demo set) and caches it next to the shards, one per crop size (a segmenter scores best at the
resolution it was trained at, so runs at 128 and 256 pixels each get their own):

    <shards>/segmenter/segmenter_<crop>.pt     checkpoint: {"format", "config", "state_dict"}
    <shards>/segmenter/segmenter_<crop>.json   sidecar: train settings, sha256 of the shards' manifest.json (a
                                               stale cache is detected when the shards change), and the
                                               FCN-score of REAL val photos, the ceiling any generator's score
                                               is read against

Modules: ``net`` (the model), ``cache`` (the files above, loading any segmenter, and the one definition of a
stale cache entry), ``fit`` (training and scoring it), ``ensure`` (the cached segmenter, trained first when
missing or stale; a run's segmenter, which rank 0 trains while the other ranks wait).

Training runs, launch/evaluate.py and sweeps all get their segmenter from ``ensure.ensure_run_segmenter`` /
``ensure.segmenter_for``: the config's ``eval.segmenter`` if set, else the cached one for ``data.shards`` at
``data.crop_size``.

``cache.load_segmenter`` also accepts a user-supplied segmenter:

- a TorchScript file whose forward takes photos (B,3,H,W) in [-1, 1] (RGB) and returns (B,19,h,w) logits
  over the Cityscapes train ids (any h, w: logits are resized to the label resolution before the argmax);
- a bare ``state_dict`` of ``net.SegmenterNet`` (its width is read from the weights).
"""
