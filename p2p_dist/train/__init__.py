"""Training: two DeepSpeed engines (G and D), one pix2pix step, checkpoints, the loop."""
