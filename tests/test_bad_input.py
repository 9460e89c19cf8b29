"""Bad input gets a clear error naming the input, and nothing already stored changes."""

from __future__ import annotations

import pytest

from sluice.errors import SourceError, UnknownTenantError
from tasks.ingest import ingest_source
from tasks.parse_process import parse_pool
from tests.conftest import tenant_rows

COUNTS = (
    "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
    "(SELECT coalesce(max(updated_at)::text, '') FROM documents)"
)


def _snapshot(db, tenant):
    return tenant_rows(db, tenant, COUNTS)[0]


@pytest.fixture()
def stocked(db, embedder, pipeline, new_tenant, tmp_path):
    tenant = new_tenant("bad")
    good = tmp_path / "good"
    good.mkdir()
    (good / "note.md").write_text("# Note\n\nThe lighthouse keeper logs every passing ship at dawn.\n")
    summary = ingest_source(db, tenant, pipeline, embedder, good, 1_000_000)
    assert summary.ingested == 1
    return tenant, _snapshot(db, tenant)


def test_unknown_tenant(db, embedder, pipeline, tmp_path):
    (tmp_path / "a.md").write_text("hello world, this is text")
    with pytest.raises(UnknownTenantError, match="'ghost'"):
        ingest_source(db, "ghost", pipeline, embedder, tmp_path, 1_000_000)


@pytest.mark.parametrize(("exists", "says"), [(True, "contains no files"), (False, "does not exist")])
def test_empty_folder_or_missing_path(db, embedder, pipeline, stocked, tmp_path, exists, says):
    tenant, before = stocked
    source = tmp_path / "source"
    if exists:
        source.mkdir()
    with pytest.raises(SourceError, match=f"{source}.*{says}"):
        ingest_source(db, tenant, pipeline, embedder, source, 1_000_000)
    assert _snapshot(db, tenant) == before


def test_file_that_parses_to_nothing_is_recorded_and_others_go_on(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "blank.txt").write_text("   \n\n  \n")
    (src / "fine.md").write_text("# Fine\n\nOtters hold hands while they sleep so they do not drift apart.\n")
    summary = ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    assert summary.failed == 1 and summary.ingested == 1
    err = summary.errors[0]
    assert err.source_id == "blank.txt" and err.stage == "parse" and "no text" in err.reason
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT source_id, stage FROM ingest_errors WHERE run_id = %s", (summary.run_id,)
        ).fetchall()
        assert rows == [("blank.txt", "parse")]
        sources = {r[0] for r in conn.execute("SELECT source_id FROM documents")}
    assert sources == {"note.md", "fine.md"}
    docs, chunks, _ = _snapshot(db, tenant)
    assert docs == before[0] + 1 and chunks > before[1]


def test_file_above_size_limit(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    (tmp_path / "big.txt").write_text("word " * 1000)
    summary = ingest_source(db, tenant, pipeline, embedder, tmp_path / "big.txt", 100)
    assert summary.failed == 1 and "above the limit of 100" in summary.errors[0].reason
    assert _snapshot(db, tenant) == before


# ---------------------------------------------------------------- one bad file among good ones
GOOD = "# Fine\n\nOtters hold hands while they sleep so they do not drift apart.\n"


def _ingest_bad(db, embedder, pipeline, tenant, folder, name, content, **kwargs):
    """Ingest a folder holding one bad file beside a good one; return the summary and the bad file's error."""
    folder.mkdir(exist_ok=True)
    (folder / "fine.md").write_text(GOOD)
    if isinstance(content, bytes):
        (folder / name).write_bytes(content)
    elif content is not None:
        (folder / name).write_text(content)
    summary = ingest_source(db, tenant, pipeline, embedder, folder, kwargs.get("max_bytes", 1_000_000))
    assert summary.ingested == 1 and summary.failed == 1, summary.errors
    err = summary.errors[0]
    assert err.source_id == name and name in str(err)
    with db.tenant(tenant) as conn:
        recorded = conn.execute(
            "SELECT source_id, stage, reason FROM ingest_errors WHERE run_id = %s", (summary.run_id,)
        ).fetchall()
        stored = {r[0] for r in conn.execute("SELECT source_id FROM documents")}
    assert recorded == [(name, err.stage, err.reason)]
    assert stored == {"note.md", "fine.md"}, "the bad file must store nothing, the good ones everything"
    return err


def test_corrupt_pdf(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    err = _ingest_bad(db, embedder, pipeline, tenant, tmp_path / "s", "broken.pdf", b"%PDF-1.4\n1 0 obj garbage")
    assert err.stage == "parse" and "corrupt or truncated PDF" in err.reason and "re-export" in err.reason


def test_scanned_pdf_without_tesseract(db, embedder, pipeline, stocked, tmp_path, monkeypatch):
    from PIL import Image, ImageDraw

    tenant, _ = stocked
    folder = tmp_path / "s"
    folder.mkdir()
    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).text((20, 20), "Scanned invoice: total 42 EUR", fill="black")
    image.save(folder / "scan.pdf")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # shutil.which("tesseract") finds nothing
    parse_pool().close()  # the parse process that takes this file starts with this PATH
    err = _ingest_bad(db, embedder, pipeline, tenant, folder, "scan.pdf", None)
    assert "no text layer" in err.reason and "install tesseract-ocr" in err.reason


def test_empty_file(db, embedder, pipeline, stocked, tmp_path):
    tenant, _ = stocked
    err = _ingest_bad(db, embedder, pipeline, tenant, tmp_path / "s", "empty.txt", b"")
    assert err.stage == "parse" and "empty" in err.reason


def test_binary_bytes_named_txt_keep_the_stored_version(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    err = _ingest_bad(db, embedder, pipeline, tenant, tmp_path / "s", "data.txt", bytes(range(256)) * 40)
    assert "binary bytes" in err.reason and "real extension" in err.reason
    # A stored document whose file turns binary keeps its last good version.
    good = tmp_path / "good"
    (good / "note.md").write_bytes(b"\x00\x01\x02" * 1000)
    summary = ingest_source(db, tenant, pipeline, embedder, good, 1_000_000)
    assert summary.failed == 1
    with db.tenant(tenant) as conn:
        text = conn.execute("SELECT text FROM documents WHERE source_id = 'note.md'").fetchone()[0]
    assert "lighthouse keeper" in text


def test_unsupported_extension(db, embedder, pipeline, stocked, tmp_path):
    tenant, _ = stocked
    err = _ingest_bad(db, embedder, pipeline, tenant, tmp_path / "s", "tool.exe", b"MZ\x90\x00" * 50)
    assert "unsupported file type '.exe'" in err.reason and ".pdf" in err.reason


def test_file_above_size_limit_among_others(db, embedder, pipeline, stocked, tmp_path):
    tenant, _ = stocked
    err = _ingest_bad(db, embedder, pipeline, tenant, tmp_path / "s", "huge.txt", "word " * 400, max_bytes=1000)
    assert err.stage == "read" and "above the limit of 1000" in err.reason


def test_symlink_loop(db, embedder, pipeline, stocked, tmp_path):
    tenant, _ = stocked
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "loop.txt").symlink_to("loop.txt")  # a link to itself
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)  # a directory cycle: not followed
    err = _ingest_bad(db, embedder, pipeline, tenant, folder, "loop.txt", None)
    assert err.stage == "read" and "symbolic links" in err.reason


def test_file_deleted_between_listing_and_reading(db, embedder, pipeline, stocked, tmp_path):
    from tasks.ingest import Run, begin, ingest_files

    tenant, _ = stocked
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "fine.md").write_text(GOOD)
    (folder / "gone.md").write_text("# Gone\n\nThis file disappears before it is read.\n")
    run = Run(db, tenant, pipeline, embedder, 1_000_000)
    files = begin(run, folder)
    (folder / "gone.md").unlink()
    summary = ingest_files(run, files)
    assert summary.ingested == 1 and summary.failed == 1
    err = summary.errors[0]
    assert err.source_id == "gone.md" and "vanished after listing" in err.reason


def test_mixed_encoding_is_decoded_line_by_line(db, embedder, pipeline, stocked, tmp_path):
    tenant, _ = stocked
    folder = tmp_path / "s"
    folder.mkdir()
    raw = "Caf\u00e9 au lait is served hot.\n".encode() + "The na\u00efve barista smiled.\n".encode("cp1252")
    (folder / "menu.txt").write_bytes(raw)
    summary = ingest_source(db, tenant, pipeline, embedder, folder, 1_000_000)
    assert summary.ingested == 1, summary.errors
    with db.tenant(tenant) as conn:
        text = conn.execute("SELECT text FROM documents WHERE source_id = 'menu.txt'").fetchone()[0]
    assert "Café au lait" in text and "naïve barista" in text


def test_thousands_of_tiny_elements(db, embedder, pipeline, stocked, tmp_path):
    from tasks.parse import parse_file

    tenant, _ = stocked
    folder = tmp_path / "s"
    folder.mkdir()
    path = folder / "tiny.md"
    path.write_text("\n\n".join(f"- item {i}" for i in range(3000)))
    doc = parse_file(path, "tiny.md", pipeline.parser)
    assert len(doc.elements) >= 2500
    summary = ingest_source(db, tenant, pipeline, embedder, folder, 1_000_000)
    assert summary.ingested == 1, summary.errors
    assert summary.chunks < len(doc.elements) / 10, "tiny elements must be merged into real chunks"
