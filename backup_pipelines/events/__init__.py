"""Backup events on the broker: what each says (`messages.py`, the contract's body), how it
reaches `backup.notifications` without ever failing an operation (`outbox.py`), and the
broker objects this project owns (`broker.py`). Operations publish them
(`operations/`); nothing else does."""
