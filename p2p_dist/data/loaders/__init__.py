"""Loaders: batches of (photo, label, ids) from a shard set. Import from the module that owns a name:

* ``build``: ``loader_options(cfg.data, ...)`` and ``build_loader``, the front every caller uses
* ``contract``: ``LoaderOptions``, the ``ShardLoader`` base class and the batch contract, with the torch
  definitions of the label encoding (``apply_label_encoding``) and the label resize rule (``nearest_indices``)
* ``dali``, ``webdataset``: the two backends, imported by ``build_loader`` only when chosen

Dependencies point one way: ``build`` -> backends -> ``contract`` -> ``shards.read``, ``order``, ``labels``.
"""
