"""Data: from source data sets to batches. Dependencies point one way, down this list:

* ``demo/``: the synthetic scene renderer and the demo shard set built from it on demand
* ``loaders/``: ``build_loader`` / ``loader_options``, the loader contract, the DALI and webdataset backends
* ``shards/``: the shard set format, packing, reading (what loaders open) and verifying
* ``sources``, ``order``, ``labels``, ``image_size``: source data sets, the sample order, the Cityscapes label
  table, and ``ImageSize``: sizes are (width, height) throughout the data layer, shapes (height, width)

Loaders never import packing or the demo renderer. Package ``__init__`` files only document: import each name
from the module that owns it.
"""
