"""Documents: the file tree, backed up incrementally and deduplicated with restic."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.settings import SourceSettings
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources.documents.backup import backup_documents, tree_fingerprint
from backup_pipelines.sources.documents.drill import drill_tree
from backup_pipelines.sources.documents.restic import ResticRepository, is_restic_id
from backup_pipelines.sources.documents.restore import check_repository, restore_tree
from backup_pipelines.sources.source import DrillResult, Log, RestoreOptions, Source, cli
from backup_pipelines.storage.layout import restic_repository

RESTIC_READ_DATA_SUBSET = "5%"  # every pack read within about a month of nightly checks


class DocumentsSettings(SourceSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_DOCUMENTS_")

    root: Path | None = Field(
        None, validation_alias=AliasChoices("BACKUP_DOCUMENTS_ROOT", "DOCUMENTS_STORAGE_ROOT")
    )
    """The file tree to back up."""
    restic_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BACKUP_RESTIC_PASSWORD")
    )
    """Opens the restic repository; without it (and its offline copy) nobody can read it."""
    cron: str = "0 3 * * *"


class DocumentsRestore(RestoreOptions):
    target: Path = Field(
        description="directory to restore the tree into",
        json_schema_extra=cli("--target-dir", "DIR"),
    )


class Documents(Source[DocumentsSettings, DocumentsRestore]):
    kind = "documents"
    dagster_kind = "restic"
    description = (
        "The documents tree, incremental and deduplicated in a restic repository kept in the "
        "same store."
    )
    system = "The CRM's documents file tree."
    address_settings = ("root",)
    watches_changes = True

    def repository(self, pruning: bool = False) -> ResticRepository:
        """In the same store as every other snapshot (`<root>/<source>/restic`); `pruning`
        opens it with the prune keys when they are set (restic's prune deletes packs)."""
        if self.settings.restic_password is None:
            raise ConfigurationError(
                f"{self.setting('restic_password')} is required for the {self.name} source"
            )
        shared = self.shared
        password = self.settings.restic_password.get_secret_value()
        key = restic_repository(self.name)
        if not shared.s3_enabled:
            return ResticRepository(str(shared.artifacts_dir / key), password)
        keys = (shared.s3_access_key, shared.s3_secret_key)
        if pruning and shared.s3_prune_access_key and shared.s3_prune_secret_key:
            keys = (shared.s3_prune_access_key, shared.s3_prune_secret_key)
        assert keys[0] and keys[1]
        endpoint = (shared.s3_endpoint_url or "https://s3.amazonaws.com").rstrip("/")
        prefix = "/".join(p for p in (shared.s3_prefix.strip("/"), key) if p)
        return ResticRepository(
            f"s3:{endpoint}/{shared.s3_bucket}/{prefix}",
            password,
            keys[0].get_secret_value(),
            keys[1].get_secret_value(),
            shared.s3_region,
        )

    def not_configured(self) -> str | None:
        if self.settings.root and self.settings.restic_password:
            return None
        return self.in_own_terms(
            f"{self.name} is not configured: set BACKUP_DOCUMENTS_ROOT and BACKUP_RESTIC_PASSWORD"
        )

    def fingerprint(self) -> list[int]:
        root = self.settings.root
        if root is None or not root.is_dir():
            raise ConfigurationError(f"{self.setting('root')} is not set to a directory")
        return tree_fingerprint(root)

    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        backup_documents(staged, self.settings.root, self.repository(), log)

    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        """Reads every pack of the restic repository (restic encrypts it itself)."""
        return check_repository(reader.snapshot, self.repository(), "100%")

    def restore(self, reader: SnapshotReader, options: DocumentsRestore, log: Log) -> str:
        return restore_tree(
            reader.snapshot, self.repository(), options.target, force=options.force, log=log
        )

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        return drill_tree(reader, self.repository(), RESTIC_READ_DATA_SUBSET, log)

    def forgetting(
        self,
        store: SnapshotStore,
        deleted: Sequence[StoredSnapshot],
        kept: Sequence[StoredSnapshot],
    ) -> Callable[[], None] | None:
        """restic forgets exactly the snapshots only deleted documents snapshots point at."""
        restic_ids = restic_ids_to_forget(deleted, kept)
        if not restic_ids:
            return None
        if self.settings.restic_password is None:
            raise ConfigurationError(
                f"{self.setting('restic_password')} is needed to prune {self.name} snapshots "
                "(restic holds their data)"
            )
        repository = self.repository(pruning=True)
        return lambda: repository.forget(restic_ids)


def restic_ids_to_forget(
    deleted: Sequence[StoredSnapshot], kept: Sequence[StoredSnapshot]
) -> list[str]:
    """The ids come from manifests, so each is checked (hex only, nothing restic could read
    as an option), and an id a kept snapshot also names (on its 8-hex short form, as restic
    resolves ids by prefix) is never forgotten."""

    def restic_id(snapshot: StoredSnapshot) -> str | None:
        value = snapshot.manifest.stats.get("restic_snapshot_id")
        return value if is_restic_id(value) else None

    kept_ids = {found[:8] for snapshot in kept if (found := restic_id(snapshot))}
    dropped = {found for snapshot in deleted if (found := restic_id(snapshot))}
    return sorted(found for found in dropped if found[:8] not in kept_ids)
