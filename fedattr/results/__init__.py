"""The result store: per-job directories of typed records, written atomically, read back typed."""
