"""Document metadata: every source round-trips to the stored document and its citations; bad metadata fails
one document, named with its key, and the others are stored."""

from __future__ import annotations

import json

import psycopg
import pytest

from sluice.db import OWNER_ROLE, admin_conninfo
from sluice.errors import ConfigError
from sluice.filter_columns import apply
from tasks.ingest import ingest_source, list_source
from tasks.retrieve import dense_search
from tests.conftest import tenant_rows

PROMOTED = {"year": "integer", "reviewed": "boolean", "desk": "text"}
STORED = "SELECT source_id, user_metadata, metadata FROM documents ORDER BY source_id"


@pytest.fixture(scope="module")
def promoted(migrated):
    """Promote three keys in the shared test database (as `sluice db up` does with SLUICE_FILTER_COLUMNS)."""
    with psycopg.connect(admin_conninfo(migrated)) as conn:
        apply(conn, OWNER_ROLE, PROMOTED)
    return PROMOTED


def _folder(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "fm.md").write_text(
        "---\ntitle: Tides\nyear: 2021\ndesk: coast\ntags: [sea, moon]\ndate: 2021-05-04\n---\n"
        "# Tides\n\nThe moon pulls the sea twice a day, and harbour masters plan around it.\n"
    )
    (src / "side.txt").write_text("Lighthouses use Fresnel lenses to throw their beam over many miles.\n")
    (src / "side.txt.meta.json").write_text(json.dumps({"year": 2019, "reviewed": True, "desk": "optics"}))
    (src / "sub" / "listed.txt").write_text("Fog horns sound every thirty seconds when the visibility drops.\n")
    (src / "sub" / "_metadata.json").write_text(json.dumps({"listed.txt": {"desk": "sound", "owner": {"n": "ada"}}}))
    (src / "plain.txt").write_text("Buoys mark the channel: red to port, green to starboard, coming home.\n")
    return src


def test_every_source_round_trips(db, embedder, pipeline, new_tenant, promoted, tmp_path):
    tenant, src = new_tenant("meta"), _folder(tmp_path)
    assert {f.source_id for f in list_source(src)} == {"fm.md", "side.txt", "sub/listed.txt", "plain.txt"}
    summary = ingest_source(db, tenant, pipeline, embedder, src, 1_000_000, metadata={"run": "r1", "desk": "run"})
    assert (summary.ingested, summary.failed) == (4, 0), summary.errors
    rows = {r[0]: (r[1], r[2]) for r in tenant_rows(db, tenant, STORED)}
    fm = {"run": "r1", "desk": "coast", "title": "Tides", "year": 2021, "tags": ["sea", "moon"], "date": "2021-05-04"}
    assert rows["fm.md"][0] == fm  # front matter over the run's metadata; YAML dates as ISO strings
    assert rows["side.txt"][0] == {"run": "r1", "desk": "optics", "year": 2019, "reviewed": True}
    assert rows["sub/listed.txt"][0] == {"run": "r1", "desk": "sound", "owner": {"n": "ada"}}
    assert rows["plain.txt"][0] == {"run": "r1", "desk": "run"}
    for user, meta in rows.values():  # filters read `metadata`: the user's keys and Sluice's own
        assert user.items() <= meta.items() and "source" in meta and "filename" in meta
    text = tenant_rows(db, tenant, "SELECT text FROM documents WHERE source_id = 'fm.md'")[0][0]
    assert "moon pulls" in text and "title:" not in text  # front matter is metadata, not indexed text
    cols = tenant_rows(db, tenant, "SELECT source_id, meta_year, meta_reviewed, meta_desk FROM documents")
    assert sorted(cols, key=str) == sorted(
        [("fm.md", 2021, None, "coast"), ("side.txt", 2019, True, "optics"), ("sub/listed.txt", None, None, "sound"),
         ("plain.txt", None, None, "run")], key=str)  # fmt: skip


def test_changed_sidecar_updates_an_unchanged_document(db, embedder, pipeline, new_tenant, promoted, tmp_path):
    tenant, src = new_tenant("meta"), _folder(tmp_path)
    ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    (src / "side.txt.meta.json").write_text(json.dumps({"year": 2024}))
    again = ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    assert again.unchanged == 4
    user, meta = {r[0]: (r[1], r[2]) for r in tenant_rows(db, tenant, STORED)}["side.txt"]
    assert user == {"year": 2024}
    assert meta["year"] == 2024 and "reviewed" not in meta and "desk" not in meta  # old user keys removed


def test_metadata_reaches_search_results_and_filters(db, embedder, pipeline, new_tenant, promoted, tmp_path):
    tenant, src = new_tenant("meta"), _folder(tmp_path)
    ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    q = embedder.encode(["how do lighthouses throw light"])[0]
    for spec in ({"doc.year": {"gte": 2019, "lt": 2020}}, {"doc.desk": "optics"}, {"doc.reviewed": True}):
        with db.tenant(tenant) as conn:
            hits = dense_search(conn, pipeline.index_id, q, pipeline.retrieval, spec)
        assert [h.source_id for h in hits] == ["side.txt"], spec
        assert hits[0].doc_metadata == {"year": 2019, "reviewed": True, "desk": "optics"}


def test_query_json_cites_with_metadata(sluice_cli, db, embedder, pipeline, new_tenant, promoted, tmp_path):
    tenant, src = new_tenant("meta"), _folder(tmp_path)
    assert sluice_cli("ingest", src, "--tenant", tenant, "--metadata", '{"batch": 7}').exit_code == 0
    result = sluice_cli("query", "What do lighthouses use?", "--tenant", tenant, "--json")
    assert result.exit_code == 0, result.output
    cites = {c["document"]: c["metadata"] for c in json.loads(result.stdout)["citations"]}
    assert cites.get("side.txt") == {"batch": 7, "year": 2019, "reviewed": True, "desk": "optics"}, cites


BAD = [
    ("side.txt.meta.json", "[1, 2]", "side.txt", "must be a JSON object"),
    ("side.txt.meta.json", "{not json", "side.txt", "not valid JSON"),
    ("side.txt.meta.json", json.dumps({"a": {"b": {"c": {"deep": {"e": 1}}}}}), "side.txt", "key 'deep'"),
    ("side.txt.meta.json", json.dumps({"big": "x" * 20_000}), "side.txt", "key 'big'"),
    ("side.txt.meta.json", json.dumps({"year": "2019"}), "side.txt", "key 'year' is promoted as integer"),
    ("side.txt.meta.json", json.dumps({"reviewed": "yes"}), "side.txt", "key 'reviewed' is promoted as boolean"),
    ("side.txt.meta.json", json.dumps({"source": "web"}), "side.txt", "key 'source' is set by Sluice"),
    ("sub/_metadata.json", json.dumps({"listed.txt": {"desk": 5}}), "sub/listed.txt", "key 'desk' is promoted as text"),
    ("sub/_metadata.json", json.dumps({"listed.txt": "x"}), "sub/listed.txt", "_metadata.json of its folder"),
    ("fm.md", "---\nyear: [unclosed\n---\nbody text here\n", "fm.md", "front matter is not valid YAML"),
    ("fm.md", "---\na: &x [1]\nb: *x\n---\nbody text here\n", "fm.md", "aliases"),
    # YAML's own converters raise ValueError (not YAMLError) for these: one document, not the run
    ("fm.md", "---\ndate: 2020-02-30\n---\nbody text here\n", "fm.md", "day is out of range"),
    ("fm.md", "---\nn: " + "1" * 5000 + "\n---\nbody text here\n", "fm.md", "front matter holds a value"),
]


@pytest.mark.parametrize(("path", "content", "failed", "says"), BAD, ids=[b[3][:24] for b in BAD])
def test_bad_metadata_fails_that_document_only(db, embedder, pipeline, new_tenant, promoted, tmp_path, path, content,
                                               failed, says):  # fmt: skip
    tenant, src = new_tenant("meta"), _folder(tmp_path)
    (src / path).write_text(content)
    summary = ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    assert (summary.ingested, summary.failed) == (3, 1)
    message = str(summary.errors[0])
    assert message.startswith(f"{failed}: metadata failed") and says in message, message
    stored = [r[0] for r in tenant_rows(db, tenant, STORED)]
    assert failed not in stored and len(stored) == 3  # not half stored: no document row, no chunks
    assert tenant_rows(db, tenant, "SELECT source_id, stage FROM ingest_errors") == [(failed, "metadata")]


def test_bad_run_metadata_is_refused_before_anything(db, embedder, pipeline, new_tenant, tmp_path):
    with pytest.raises(ConfigError, match="run's metadata"):
        ingest_source(
            db, new_tenant("meta"), pipeline, embedder, _folder(tmp_path), 1_000_000, metadata={"a": [[[[1]]]]}
        )


def test_a_worker_keeps_few_parsed_manifests_however_many_folders_it_reads(tmp_path):
    import gc
    import tracemalloc

    from tasks.metadata import MANIFEST, _from_manifest, _manifest

    _manifest.cache_clear()
    entry = json.dumps({f"k{j}": f"v{j}" for j in range(8)})
    body = "{" + ",".join(f'"f{i}.md": {entry}' for i in range(16_000)) + "}"  # 1.7 MB: 100 uploads' worth
    tracemalloc.start()
    try:
        for n in range(8):  # eight upload jobs, each a folder of its own with its manifest (~12 MiB parsed)
            folder = tmp_path / f"job{n}"
            folder.mkdir()
            (folder / MANIFEST).write_text(body)
            assert _from_manifest(folder / "f1.md", None)["k7"] == "v7"
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        _manifest.cache_clear()
    assert held < 50 * 1024 * 1024, f"{held / 2**20:.0f} MiB of parsed manifests kept"
