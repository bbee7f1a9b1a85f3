"""PostgreSQL's write-ahead log kept between base backups: its file names (`names.py`), the
archive in a store (`archive.py`), the segments pushed ahead of PostgreSQL's asking
(`ahead.py`), and the bound on what waits while the store cannot be reached (`queue.py`).
Kept apart from the sources, so that `wal-push`, which PostgreSQL runs once per WAL file,
starts without importing them."""
