"""Distributed inference on Dask: shard actors holding layer ranges, and the pipeline client."""
