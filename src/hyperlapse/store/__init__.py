"""The Zarr v3 trajectory store: format, writer (commit protocol), shards, reader, info.

* :mod:`~hyperlapse.store.format`: names, schema version, codecs, opening paths and URLs;
* :mod:`~hyperlapse.store.location`: :class:`StoreLocation`, a local path or URL resolved once;
* :mod:`~hyperlapse.store.writer`: :class:`StoreWriter`, the single writer of a store (the
  commit protocol; ``mode`` append/create/replace, :mod:`~hyperlapse.store.replace`);
* :mod:`~hyperlapse.store.sinks`: how parameter shards are written (in place, or through Zarr),
  one interface chosen once per writer;
* :mod:`~hyperlapse.store.shards`: Zarr sharding-spec shard objects from encoded snapshots;
* :mod:`~hyperlapse.store.lock`: one writer per store (flock, or a lease for URL stores);
* :mod:`~hyperlapse.store.reader`: ``open_trajectory`` -> ``Trajectory`` (public as
  ``hyperlapse.open_trajectory``);
* :mod:`~hyperlapse.store.info`: ``hyperlapse info``.

The format is documented in ``docs/store-format.md``.
"""
