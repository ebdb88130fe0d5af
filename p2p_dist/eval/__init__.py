"""Evaluation: FID/KID with the standard Inception network offline (``fid``), SSIM/PSNR/MSE/L1/FCN-score and
the rank-synced ``Evaluator`` (``metrics``), the FCN-score segmenter (``segmenter/``), the loop over a split
(``evaluate``), a checkpoint of a run evaluated and reported (``evaluate_run``, ``report``: launch/evaluate.py),
and the evaluation during training (``periodic``: the hook launch/train.py and tune hand to the trainer)."""
