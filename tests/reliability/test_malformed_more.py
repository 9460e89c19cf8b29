"""More malformed input (with tests/reliability/test_malformed.py, well over 30 distinct cases):
named sources escaping the ingest root, oversized bodies refused before they are read, unicode edge
cases (NUL, RTL overrides, lone surrogates, a 1 MB question), headers, zip bombs in DOCX and XLSX,
and broken files of several formats, through the API, the workers' ingestion and the CLI.

Each gets a clear 4xx or a recorded ingest error naming the file and the fix, none a 5xx or a
crash, and a document stored before all of them is still there and still answers afterwards.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest

from serving.auth import create_key
from sluice.db import create_tenant
from tests.reliability.zipbomb import bomb
from tests.serving_support import ApiServer, assert_request_refused, refusal_cases, wait_job

Q, J = "/v1/query", "/v1/jobs"
JSON = {"content-type": "application/json"}
SAMPLE_DOCX = Path(__file__).resolve().parents[2] / "data" / "sample" / "corpus" / "brake-maintenance.docx"
HIVE = "# Hives\n\nA beekeeper smokes the hive entrance to calm the guard bees before opening the box.\n"
HIVE_QUESTION = "Why does a beekeeper smoke the hive entrance?"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upload(*files: tuple[str, bytes]) -> dict:
    return {"kind": "ingest", "files": [{"name": n, "content_base64": b64(d)} for n, d in files]}


def small_xlsx() -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(["hive", "frames"])
    book.active.append(["north", 10])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def plain_zip(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def hive_tenant(db, rel_api):
    """A tenant with one document stored before any malformed input: (tenant, key)."""
    tenant = f"mal-{__import__('uuid').uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    with rel_api.client(key) as client:
        job = client.post(J, json=upload(("hives.md", HIVE.encode()))).json()["job_id"]
        assert wait_job(client, job)["status"] == "succeeded"
    return tenant, key


@pytest.fixture(scope="module")
def ingest_root(tmp_path_factory, hive_tenant) -> Path:
    """An ingest root where the hive tenant's folder holds `docs` and a symlink out of the folder."""
    root = tmp_path_factory.mktemp("ingest-root")
    (root / hive_tenant[0] / "docs").mkdir(parents=True)
    (root / hive_tenant[0] / "docs" / "ok.md").write_text("# ok\n\nfine\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.md").write_text("# secret\n")
    (root / hive_tenant[0] / "link-out").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def root_api(rel_settings, two_process_worker, ingest_root):
    """The package's worker behind an API that allows named sources under `ingest_root`."""
    with ApiServer(rel_settings.model_copy(update={"ingest_root": ingest_root})) as server:
        yield server


def _deep(depth: int) -> bytes:
    return b'{"question": ' + b"[" * depth + b"]" * depth + b"}"


# (id, method, path, request kwargs, allowed statuses, text the message must contain or "")
API_CASES = [
    ("source-dotdot", "POST", J, {"json": {"kind": "ingest", "source": "../outside"}}, {422}, "'..'"),
    ("source-absolute", "POST", J, {"json": {"kind": "ingest", "source": "/etc"}}, {422}, "relative path"),
    ("source-inner-dotdot", "POST", J, {"json": {"kind": "ingest", "source": "docs/../../x"}}, {422}, "'..'"),
    ("source-symlink-out", "POST", J, {"json": {"kind": "ingest", "source": "link-out"}}, {422}, "outside"),
    ("source-missing", "POST", J, {"json": {"kind": "ingest", "source": "nope"}}, {422}, "does not exist"),
    ("source-tilde", "POST", J, {"json": {"kind": "ingest", "source": "~/.ssh"}}, {422}, "does not exist"),
    ("source-encoded", "POST", J, {"json": {"kind": "ingest", "source": "..%2f..%2fetc"}}, {422}, "does not exist"),
    ("source-nul", "POST", J, {"json": {"kind": "ingest", "source": "docs\u0000x"}}, {422}, "NUL"),
    ("body-40mb", "POST", J, {"content": b"{" + b" " * (40 * 1024 * 1024) + b"}", "headers": JSON}, {413}, "exceeds"),
    ("question-1mb", "POST", Q, {"json": {"question": "q" * (1024 * 1024)}}, {422}, "4000"),
    ("question-nul", "POST", Q, {"json": {"question": "bees\u0000"}}, {422}, "NUL"),
    ("question-rtl", "POST", Q, {"json": {"question": "\u202eWhy smoke the hive?\u202c \u05de\u05d4"}}, {200}, ""),
    ("question-zero-width", "POST", Q, {"json": {"question": "\u200b\u200d\ufeff"}}, {200, 422}, ""),
    ("question-combining", "POST", Q, {"json": {"question": "hive\u0301\u0302\u0303 \U0001f41d?" * 20}}, {200}, ""),
    ("question-deep-array", "POST", Q, {"content": _deep(100_000), "headers": JSON}, {400, 413, 422}, ""),
    ("question-bad-utf8", "POST", Q, {"content": b'{"question": "\xff\xfe bees"}', "headers": JSON}, {400, 422}, ""),
    ("question-bom", "POST", Q, {"content": b'\xef\xbb\xbf{"question": "bees?"}', "headers": JSON}, {200, 422}, ""),
    (
        "filter-key-surrogate",
        "POST",
        Q,
        {"content": b'{"question": "bees", "filters": {"\\udc00": "x"}}', "headers": JSON},
        {422},
        "surrogate",
    ),
    (
        "filters-10k-keys",
        "POST",
        Q,
        {"json": {"question": "bees", "filters": {f"k{i}": i for i in range(10_000)}}},
        {413, 422},
        "",
    ),
    ("stream-huge-number", "POST", Q, {"content": b'{"question": "b", "stream": 1e400}', "headers": JSON}, {422}, ""),
    ("upload-name-dotdot", "POST", J, {"json": upload(("..", b"# x"))}, {422}, "base name"),
    ("upload-name-slash", "POST", J, {"json": upload(("a/b.md", b"# x"))}, {422}, "base name"),
    ("upload-name-rtl", "POST", J, {"json": upload(("evil\u202edm.txt", b"# rtl\n\nname\n"))}, {202}, ""),
    ("auth-latin1-garbage", "GET", J + "/x", {"headers": {"Authorization": b"Bearer \xff\xfe"}}, {401}, ""),
    ("job-id-surrogate", "GET", J + "/%ED%A0%80", {}, {404}, ""),
]


@refusal_cases(API_CASES)
def test_api_refuses_malformed_input(root_api, hive_tenant, method, path, kwargs, allowed, says):
    assert_request_refused(root_api, hive_tenant[1], method, path, kwargs, allowed, says)


def test_request_id_header_with_control_characters_is_replaced(root_api):
    given = "abc\tdef" + "x" * 500
    r = root_api.client().get("/healthz", headers={"X-Request-Id": given})
    assert r.status_code == 200 and r.headers["X-Request-Id"] not in (given, "")


# (upload name, bytes builder, text its recorded error must contain)
BAD_FILES = [
    ("bomb.docx", lambda: bomb(SAMPLE_DOCX.read_bytes(), "word/media/bomb.xml", 1024), "SLUICE_MAX_UNZIPPED_BYTES"),
    ("bomb.xlsx", lambda: bomb(small_xlsx(), "xl/media/bomb.xml", 1024), "SLUICE_MAX_UNZIPPED_BYTES"),
    ("ratio.docx", lambda: bomb(SAMPLE_DOCX.read_bytes(), "word/media/r.xml", 100), "SLUICE_MAX_ZIP_RATIO"),
    ("random.docx", lambda: bytes(range(256)) * 40, "not a valid zip"),
    ("no-workbook.xlsx", lambda: plain_zip("readme.txt", b"not a workbook"), "no-workbook.xlsx"),
    ("broken.json", lambda: b'{"hive": [1, 2', "broken.json"),
    ("nuls.txt", lambda: b"\x00" * 4096, "nuls.txt"),
    ("tags-only.html", lambda: b"<html><head><script>x()</script></head><body><br/></body></html>", "tags-only.html"),
]


def test_ingest_records_an_error_per_bad_file_and_keeps_the_good_one(rel_api, hive_tenant, db):
    tenant, key = hive_tenant
    files = [(name, build()) for name, build, _ in BAD_FILES] + [("good.md", b"# Good\n\nQueens lay eggs.\n")]
    assert sum(len(d) for _, d in files) < 20 * 1024 * 1024  # the bombs are small until inflated
    with rel_api.client(key, timeout=120) as client:
        job = client.post(J, json=upload(*files)).json()["job_id"]
        result = wait_job(client, job, timeout=600)
    assert result["status"] == "succeeded", result
    body = result["result"]
    assert body["ingested"] == 1 and body["failed"] == len(BAD_FILES), body
    for name, _, says in BAD_FILES:
        errors = [e for e in body["errors"] if e.startswith(f"{name}:")]
        assert len(errors) == 1 and says in errors[0], (name, body["errors"])
    with db.tenant(tenant) as conn:
        recorded = {row[0] for row in conn.execute("SELECT source_id FROM ingest_errors")}
    assert {name for name, _, _ in BAD_FILES} <= recorded


CLI_CASES = [
    ("query-filter-not-json", ["query", "bees?", "--tenant", "TENANT", "--filter", "{not json"], "filter"),
    ("query-filter-list", ["query", "bees?", "--tenant", "TENANT", "--filter", "[1, 2]"], "filter"),
    ("ingest-bad-collection", ["ingest", "FOLDER", "--tenant", "TENANT", "--collection", "../x"], "collection"),
    ("ingest-glob-nothing", ["ingest", "/nonexistent-dir-x/*.md", "--tenant", "TENANT"], "matches no files"),
    ("ingest-missing-config", ["ingest", "FOLDER", "--tenant", "TENANT", "--config", "/no/such.yaml"], "such.yaml"),
    ("key-bad-tenant", ["key", "create", "--tenant", "Bad Tenant!"], "tenant"),
]


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_malformed_input(cli, hive_tenant, tmp_path, args, says):
    (tmp_path / "a.md").write_text("# a\n\nan ordinary note\n")
    args = [{"TENANT": hive_tenant[0], "FOLDER": str(tmp_path)}.get(a, a) for a in args]
    result = cli(*args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert says.lower() in result.output.lower(), result.output


def test_cli_ingest_of_a_zip_bomb_names_the_file_and_the_limit(cli, migrated, hive_tenant, tmp_path):
    (tmp_path / "bomb.docx").write_bytes(bomb(SAMPLE_DOCX.read_bytes(), "word/media/bomb.xml", 1024))
    (tmp_path / "fine.md").write_text("# Fine\n\nDrones do not sting.\n")
    limited = migrated.model_copy(update={"max_unzipped_bytes": 64 * 1024 * 1024})
    result = cli("ingest", str(tmp_path), "--tenant", hive_tenant[0], settings=limited)
    assert result.exit_code == 1, result.output  # 1 = some documents failed, the others went in
    assert "bomb.docx" in result.output and "67108864" in result.output and "SLUICE_MAX_UNZIPPED_BYTES" in result.output


def test_stored_document_survives_and_answers(rel_api, hive_tenant, db):
    """Runs last in this module: the document stored first is intact and still answers."""
    tenant, key = hive_tenant
    with db.tenant(tenant) as conn:
        sources = {row[0] for row in conn.execute("SELECT source_id FROM documents")}
    assert {"hives.md", "good.md", "fine.md"} <= sources, sources
    with rel_api.client(key, timeout=120) as client:
        r = client.post(Q, json={"question": HIVE_QUESTION})
    assert r.status_code == 200 and "smokes the hive entrance" in r.json()["answer"], r.text
