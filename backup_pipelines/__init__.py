"""backup_pipelines: the CRM's backups as Dagster assets, and their restore."""
