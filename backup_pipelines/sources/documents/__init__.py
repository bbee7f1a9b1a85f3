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
from backup_pipelines.sources.documents.mirror import copy_repository
from backup_pipelines.sources.documents.restic import ResticRepository
from backup_pipelines.sources.documents.restore import check_repository, restic_id, restore_tree
from backup_pipelines.sources.source import DrillResult, Log, RestoreOptions, Source, cli
from backup_pipelines.storage.layout import restic_repository
from backup_pipelines.stores import build_store, primary_store

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

    def repository(
        self, store: SnapshotStore | None = None, pruning: bool = False
    ) -> ResticRepository:
        """The restic repository beside the source's snapshots in `store` (the primary when
        none is named): `<root>/<source>/restic`. `pruning` opens it with the store's prune
        keys when it has some (restic's prune deletes packs)."""
        if self.settings.restic_password is None:
            raise ConfigurationError(
                f"{self.setting('restic_password')} is required for the {self.name} source"
            )
        backend = (store or build_store(primary_store(self.shared), self.shared)).backend
        access = backend.tool_access(restic_repository(self.name), pruning=pruning)
        password = self.settings.restic_password.get_secret_value()
        if access.keys is None:
            return ResticRepository(access.location, password)
        return ResticRepository(access.location, password, *access.keys)

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
        return check_repository(reader.snapshot, self.repository(reader.store), "100%")

    def restore(self, reader: SnapshotReader, options: DocumentsRestore, log: Log) -> str:
        return restore_tree(
            reader.snapshot,
            self.repository(reader.store),
            options.target,
            force=options.force,
            log=log,
        )

    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        return drill_tree(reader, self.repository(reader.store), RESTIC_READ_DATA_SUBSET, log)

    def copy_own_data(
        self,
        source: SnapshotStore,
        target: SnapshotStore,
        snapshots: Sequence[StoredSnapshot],
    ) -> int:
        """restic's repository, with the restic snapshots of `snapshots` (and no other)."""
        ids = [found for snapshot in snapshots if (found := restic_id(snapshot))]
        return copy_repository(source.backend, target.backend, restic_repository(self.name), ids)

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
        repository = self.repository(store, pruning=True)
        return lambda: repository.forget(restic_ids)


def restic_ids_to_forget(
    deleted: Sequence[StoredSnapshot], kept: Sequence[StoredSnapshot]
) -> list[str]:
    """The ids come from manifests, so each is checked (hex only, nothing restic could read
    as an option), and an id a kept snapshot also names (on its 8-hex short form, as restic
    resolves ids by prefix) is never forgotten."""
    kept_ids = {found[:8] for snapshot in kept if (found := restic_id(snapshot))}
    dropped = {found for snapshot in deleted if (found := restic_id(snapshot))}
    return sorted(found for found in dropped if found[:8] not in kept_ids)
