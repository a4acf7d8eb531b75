"""zmqdask: a Dask-compatible compute framework on a ZeroMQ message broker."""
