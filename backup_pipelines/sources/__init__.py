"""One package per backed-up system, each declaring its `Source` (`source.py`); `registry.py`
lists them. A source knows *what* to dump, how to check it and how to restore it; it never
knows where snapshots are stored, and imports nothing from Dagster."""
