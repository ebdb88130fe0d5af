"""Data: Cityscapes labels, sources, the synthetic demo tree, shard packing and loaders."""
