"""The operations, each whole in one module and apart from Dagster: the work, its audit
record, its events and its log lines.

`backup.py` (start, stage, commit, failure), `verify.py`, `drill.py`,
`restore.py`, `prune.py`, `wal.py` (wal-push and wal-fetch) and `alerts.py`
(what monitoring announces). The command (`cli/`) and the Dagster adapters
(`dagster_defs/`) call them with a `Caller` (`caller.py`: who runs it, where
its progress is said) and only translate arguments, errors and metadata, so
an operation has the same effects whichever way it was started.
"""
