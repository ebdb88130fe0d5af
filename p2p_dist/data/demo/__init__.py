"""The built-in demo data: ``scenes`` renders synthetic street scenes as an official Cityscapes tree, and
``shard_set`` packs them into the demo shard set that training builds on demand (``ensure_demo_shards``).

Nothing outside this package imports the scene renderer except to build demo data: loaders never load it.
"""
