"""p2p_dist: fast, distributed pix2pix (Cityscapes label maps -> photos)."""
