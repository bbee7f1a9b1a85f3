"""The snapshot format and its life: names, manifest, the staging pipeline that makes one, the
store that commits and lists them, and the reader that checks and restores their bytes."""
