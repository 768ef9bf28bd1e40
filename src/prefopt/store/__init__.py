"""Built artifacts on disk: the fingerprinted artifact cache with its locks (`cache`), disk-space and
atomic-write helpers (`disk`), and the per-process memo that lets sweep jobs share them (`memo`).
"""
