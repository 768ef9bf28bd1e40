"""What outlives a run on disk or in the process: the fingerprinted artifact cache with its manifests and
locks (`cache`) and the per-process memo that lets
the jobs of a sweep share a loaded task and starting policy (`memo`). A new cached artifact is a
`cache.cached_dir(root, kind, key, build)` call in the code that builds it, keyed by a `fingerprint`
of everything it depends on. Exercised by `pytest tests/test_cache_faults.py tests/test_memo.py`.
"""
