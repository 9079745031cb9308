"""The Zarr v3 trajectory store: format, writer (commit protocol), shards, reader, info.

* :mod:`~hyperlapse.store.format`: names, schema version, codecs, opening paths and URLs;
* :mod:`~hyperlapse.store.writer`: :class:`StoreWriter`, the single writer of a store;
* :mod:`~hyperlapse.store.shards`: Zarr sharding-spec shard objects from encoded snapshots;
* :mod:`~hyperlapse.store.lock`: one writer per store (flock, or a lease for URL stores);
* :mod:`~hyperlapse.store.reader`: ``open_trajectory`` -> ``Trajectory`` (public as
  ``hyperlapse.open_trajectory``);
* :mod:`~hyperlapse.store.info`: ``hyperlapse info``.

The format is documented in ``docs/store-format.md``.
"""
