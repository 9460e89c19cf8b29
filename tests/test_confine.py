"""Confinement of API-named sources to a tenant's folder (`sluice/confine.py`), and the operator's CLI
paths left unconfined: real folders, symlinks and a FIFO, real Postgres and the real embedder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sluice.confine import read_inside, resolve_named, resolve_source, tenant_folder
from sluice.errors import DocumentError, SourceError
from sluice.settings import Settings
from tasks.ingest import ingest_source


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(ingest root, tenant t1's real folder, an outside folder holding secret.md)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "t1" / "docs").mkdir(parents=True)
    (root / "t2" / "private").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe outside secret is aubergine.\n")
    (root / "t1" / "docs" / "a.md").write_text("# A\n\nThe inside note mentions kites.\n")
    (root / "t1" / "docs" / "out.md").symlink_to(outside / "secret.md")
    return root, tenant_folder(root, "t1"), outside


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("/etc", "relative path"),
        ("../t2/private", "'..'"),
        ("t2/private", "does not exist"),
        ("private", "does not exist"),
        ("docs/out.md", "outside"),
    ],
)
def test_names_resolve_only_inside_the_tenants_folder(layout, name, says):
    _, folder, _ = layout
    with pytest.raises(SourceError, match=says):
        resolve_named(folder, name)


def test_a_name_inside_resolves_and_named_sources_need_a_root(layout):
    root, folder, _ = layout
    assert resolve_named(folder, "docs") == folder / "docs"
    with pytest.raises(SourceError, match="SLUICE_INGEST_ROOT"):
        tenant_folder(None, "t1")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("file://{root}/t2/private", "inside your ingest folder"),
        ("file://{root}/t1/docs/out.md", "inside your ingest folder"),  # a symlink out, named by URL
        ("file://{root}/t1/../t2/private", "inside your ingest folder"),
        ("file://docs", "file:/// URL"),  # relative: not a URL of a path
        ("s3://bucket/ingest/t2/x", "outside your ingest prefix"),
        ("s3://bucket/ingest/t1/../t2/x", "outside your ingest prefix"),
        ("s3://bucket/ingest/t10/x", "outside your ingest prefix"),  # a prefix of the id is not the tenant
        ("s3://other-bucket/ingest/t1/x", "outside your ingest prefix"),
    ],
)
def test_url_sources_stay_in_the_tenants_folder_or_prefix(layout, source, says):
    root = layout[0]
    settings = Settings(ingest_root=root, ingest_url="s3://bucket/ingest/")
    with pytest.raises(SourceError, match=says):
        resolve_source(settings, "t1", source.format(root=root))


def test_url_sources_inside_resolve_and_remote_ones_need_a_prefix(layout):
    root, folder, _ = layout
    settings = Settings(ingest_root=root, ingest_url="s3://bucket/ingest")
    assert resolve_source(settings, "t1", f"file://{root}/t1/docs") == folder / "docs"
    assert resolve_source(settings, "t1", "docs") == folder / "docs"
    assert resolve_source(settings, "t1", "s3://bucket/ingest/t1/a/b.md") == "s3://bucket/ingest/t1/a/b.md"
    with pytest.raises(SourceError, match="SLUICE_INGEST_URL"):
        resolve_source(Settings(ingest_root=root), "t1", "s3://bucket/ingest/t1/x")


def test_a_symlink_out_is_not_read_and_a_fifo_does_not_hang(layout):
    _, folder, _ = layout
    with pytest.raises(DocumentError, match="outside this tenant's ingest folder"):
        read_inside(folder / "docs" / "out.md", "out.md", folder, 1_000_000)
    os.mkfifo(folder / "docs" / "pipe.md")
    result: list = []
    reader = threading.Thread(target=lambda: result.append(_error(folder / "docs" / "pipe.md", folder)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert result and "not a regular file" in result[0]
    assert read_inside(folder / "docs" / "a.md", "a.md", folder, 1_000_000).startswith(b"# A")
    with pytest.raises(DocumentError, match="SLUICE_MAX_FILE_BYTES"):
        read_inside(folder / "docs" / "a.md", "a.md", folder, 5)


def _error(path: Path, folder: Path) -> str:
    try:
        read_inside(path, path.name, folder, 1_000_000)
    except DocumentError as exc:
        return str(exc)
    return "read"


def test_confined_ingest_records_the_escape_and_the_cli_path_still_follows_it(
    db, embedder, pipeline, new_tenant, layout
):
    _, folder, _ = layout
    confined, trusted = new_tenant("conf"), new_tenant("cli")
    summary = ingest_source(db, confined, pipeline, embedder, folder / "docs", 1_000_000, confine_to=folder)
    assert (summary.ingested, summary.failed) == (1, 1)
    assert "outside this tenant's ingest folder" in str(summary.errors[0])
    with db.tenant(confined) as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text LIKE '%aubergine%'").fetchone()[0] == 0
        assert conn.execute("SELECT source_id, stage FROM ingest_errors").fetchall() == [("out.md", "read")]
    # The operator's own paths (CLI, flows) are trusted: the same folder ingests both files.
    assert ingest_source(db, trusted, pipeline, embedder, folder / "docs", 1_000_000).ingested == 2
