"""WebDataset shard sets (format: ``shards/README.md``). Import from the module that owns a name:

* ``format``: names, member codecs and DALI index files (what every reader and writer agrees on)
* ``pack``: ``PackSettings`` and ``pack_pairs`` (source samples -> a verified shard set)
* ``read``: ``read_manifest`` and ``ShardSet`` (what the loaders open; cheap load-time checks)
* ``verify``: ``verify_shards`` (full check: re-hash, re-index and optionally decode everything)

Integrity is checked at three costs: when packing (every member written decodes back), when a loader opens
a set (sizes, index checksums and layout against the manifest, then each sample's CRC32 as it is read), and
by ``verify`` (everything).
"""
