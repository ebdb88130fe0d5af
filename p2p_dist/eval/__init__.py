"""Evaluation: FID/KID with the standard Inception network offline (``fid``), SSIM/PSNR/MSE/L1/FCN-score and
the rank-synced ``Evaluator`` (``metrics``), the FCN-score segmenter (``segmenter``), and the loop over a
split (``evaluate``)."""
