"""Retention: the policy (`policy.py`, which snapshots to keep) and pruning (`pruning.py`,
deleting the rest from a store)."""
