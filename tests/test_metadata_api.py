"""Metadata through the API, end to end: uploads' per-file `metadata` and a job's `metadata` reach the stored
documents and come back in citations; bad metadata is a 422 naming the file and key."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import tenant_rows
from tests.serving_support import keyed_tenant, run_job

LENS = "# Lenses\n\nLighthouses use Fresnel lenses to throw their beam over many miles of open sea.\n"
FOG = "# Fog\n\nFog horns sound every thirty seconds whenever the visibility at the harbour drops.\n"


def _file(name: str, text: str, metadata: dict | None = None) -> dict:
    body = {"name": name, "content_base64": base64.b64encode(text.encode()).decode()}
    return {**body, "metadata": metadata} if metadata is not None else body


@pytest.fixture(scope="module")
def api(stack_settings, start_stack):
    return start_stack(stack_settings("metadata-test"))


def test_upload_metadata_round_trips_to_citations(api, db):
    tenant, key = keyed_tenant(db, "metaapi")
    files = [_file("lens.md", LENS, {"year": 2019, "desk": "optics"}), _file("fog.md", FOG)]
    with api.client(key) as client:
        done = run_job(client, {"kind": "ingest", "files": files, "metadata": {"batch": "b7", "desk": "job"}})
        assert done["result"]["ingested"] == 2, done
        rows = dict(tenant_rows(db, tenant, "SELECT source_id, user_metadata FROM documents"))
        assert rows == {
            "lens.md": {"batch": "b7", "year": 2019, "desk": "optics"},
            "fog.md": {"batch": "b7", "desk": "job"},
        }
        r = client.post(
            "/v1/query", json={"question": "What lenses do lighthouses use?", "filters": {"doc.year": 2019}}
        )
        assert r.status_code == 200, r.text
        assert [c["metadata"] for c in r.json()["citations"]] == [rows["lens.md"]] * len(r.json()["citations"])
        assert r.json()["citations"]


@pytest.mark.parametrize(
    ("metadata", "says"),
    [([1, 2], "metadata"), ({"a": {"b": {"c": {"deep": {"e": 1}}}}}, "key 'deep'"),
     ({"big": "x" * 20_000}, "key 'big'"), ({"source": "web"}, "key 'source'")],
)  # fmt: skip
def test_bad_upload_metadata_is_a_422_naming_file_and_key(api, db, metadata, says):
    _, key = keyed_tenant(db, "metaapi")
    with api.client(key) as client:
        r = client.post("/v1/jobs", json={"kind": "ingest", "files": [_file("lens.md", LENS, metadata)]})
    assert r.status_code == 422, r.text
    assert says in r.text and ("lens.md" in r.text or "files" in r.text), r.text
