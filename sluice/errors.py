"""The project's own exceptions; each message names the input and the fix."""

from __future__ import annotations


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""


class ConfigError(SluiceError):
    """A setting or pipeline config is invalid."""


class DatabaseError(SluiceError):
    """The database is unreachable, unmigrated or lacks pgvector."""


class UnknownTenantError(SluiceError):
    """The tenant named does not exist."""

    def __init__(self, tenant: str):
        super().__init__(f"unknown tenant {tenant!r}: create it first with `sluice tenant create {tenant}`")
        self.tenant = tenant


class SourceError(SluiceError):
    """An ingestion source (folder, glob, file) cannot be read."""


class SourceUnavailableError(SluiceError):
    """The object store holding a source does not answer (down, unreachable): worth trying again later."""


class DocumentError(SluiceError):
    """One document failed to parse, chunk or embed; recorded and skipped."""

    def __init__(self, source_id: str, stage: str, reason: str):
        super().__init__(f"{source_id}: {stage} failed: {reason}")
        self.source_id = source_id
        self.stage = stage
        self.reason = reason


class EmbedderMismatchError(SluiceError):
    """The embedder in use is not the one an index was built with."""


class QueryError(SluiceError):
    """A query or filter is invalid."""


class GenerationError(SluiceError):
    """No tier or replica produced an answer within the deadline."""


class RouterError(SluiceError):
    """A router cannot be built or trained (missing model file, hash mismatch, bad training data)."""
