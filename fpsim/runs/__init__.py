"""Sweeps: many trainings, keyed by their configuration, run on a pool or Dask, kept in SQLite.

``sweep``: grids, keys, executors.  ``store``: the SQLite store.  Builds on the engines.
"""
