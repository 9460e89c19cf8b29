"""Helpers of the rollout tests: a database of their own (a global rollout visits every tenant of its
database) and small corpora whose documents each hold one fact a question can find."""

from __future__ import annotations

from pathlib import Path

from sluice import champion
from sluice.config import PipelineConfig, parse_config
from sluice.db import Database, drop_database, migrate
from sluice.settings import Settings
from tasks.ingest import ingest_source
from tasks.ingest_served import ingest_served

SMALL = {"chunker": {"kind": "recursive", "chunk_size": 300, "chunk_overlap": 30}}
ANIMALS = ("otter", "heron", "badger", "kestrel", "newt", "vole", "stoat", "curlew", "dormouse", "lapwing")
PLACES = ("Ashford", "Bramley", "Corfe", "Dunster", "Elton", "Fowey", "Grassington", "Hawes", "Ilam", "Jarrow")


def private_database(settings: Settings, name: str) -> Settings:
    """`settings` on a fresh, migrated database `name`."""
    own = settings.model_copy(update={"db_name": name})
    drop_database(own)
    migrate(own)
    return own


def fact(i: int) -> tuple[str, str]:
    """(question, answer word) of document i."""
    animal, place = ANIMALS[i % len(ANIMALS)], PLACES[(i // len(ANIMALS)) % len(PLACES)]
    return f"Where does the {animal} number {i} live?", f"{place}-{i}"


def write_docs(folder: Path, count: int, first: int = 0) -> list[Path]:
    """`count` notes of ~900 characters, each naming where one animal lives (chunkers split them differently)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        animal, place = ANIMALS[i % len(ANIMALS)], fact(i)[1]
        notes = (f"Field note {n} on the {animal} records weather, tracks and the time of day." for n in range(8))
        filler = " ".join(notes)
        body = f"# Note {i}\n\n{filler}\n\nThe {animal} number {i} lives near the village of {place}, by the river.\n"
        path = folder / f"note-{i:03d}.md"
        path.write_text(body)
        paths.append(path)
    return paths


def ingest(settings: Settings, db: Database, tenant: str, folder: Path) -> str:
    """Ingest a folder into the tenant's served index (as every entry point does); return that index."""

    def once(config, embedder):
        return ingest_source(db, tenant, config, embedder, folder, settings.max_file_bytes)

    return ingest_served(settings, db, tenant, "default", once).index_id


def promote(db: Database, body: dict, tenant: str | None = None) -> PipelineConfig:
    """Record a promotion of the config `body` (global, or for one tenant)."""
    config = parse_config(body)
    champion.store_config(db, config)
    champion.record_promotion(
        db, config.config_id, run_id=None, model_version=None, evaluated_on=tenant, reason="test", tenant=tenant
    )
    return config


def index_counts(db: Database, tenant: str, index_id: str) -> tuple[int, int, int]:
    """(documents the index holds, its chunks, the chunks its documents should have): equal when built once."""
    with db.tenant(tenant) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM indexed_documents WHERE index_id = %(i)s), "
            "(SELECT count(*) FROM chunks WHERE index_id = %(i)s), "
            "(SELECT coalesce(sum(chunk_count), 0) FROM indexed_documents WHERE index_id = %(i)s)",
            {"i": index_id},
        ).fetchone()
