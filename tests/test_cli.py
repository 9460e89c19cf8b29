"""The `sluice` command line: exit codes and messages a user can act on."""

from __future__ import annotations

import json


def test_ingest_unknown_tenant_exits_2(cli, tmp_path):
    (tmp_path / "a.md").write_text("# A\n\nSome words here.")
    result = cli("ingest", str(tmp_path), "--tenant", "no-such-tenant")
    assert result.exit_code == 2
    assert "unknown tenant 'no-such-tenant'" in result.output


def test_ingest_and_query_round_trip(cli, tmp_path):
    (tmp_path / "bees.md").write_text("# Bees\n\nHoneybees communicate the location of flowers with a waggle dance.\n")
    assert cli("tenant", "create", "cli-tenant").exit_code == 0
    result = cli("ingest", str(tmp_path), "--tenant", "cli-tenant")
    assert result.exit_code == 0, result.output
    result = cli("query", "How do bees tell each other where flowers are?", "--tenant", "cli-tenant", "--json")
    assert result.exit_code == 0, result.output
    cite = json.loads(result.stdout)["citations"][0]  # the API's citation shape
    assert cite["document"] == "bees.md" and cite["span"][0] < cite["span"][1] and cite["document_id"]


def test_invalid_tenant_id(cli):
    result = cli("tenant", "create", "Bad Tenant!")
    assert result.exit_code == 2 and "invalid" in result.output


def test_bad_config_file_names_the_field(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("chunker:\n  kind: recursive\n  chunk_size: 5\n")
    result = cli("query", "q", "--tenant", "x", "--config", str(cfg))
    assert result.exit_code == 2 and "chunker.recursive.chunk_size" in result.output


def test_ingest_exits_1_and_names_the_failed_file_then_syncs(cli, tmp_path):
    (tmp_path / "ok.md").write_text("# Owls\n\nBarn owls hunt by sound in complete darkness.\n")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 truncated")
    assert cli("tenant", "create", "cli-partial").exit_code == 0
    result = cli("ingest", str(tmp_path), "--tenant", "cli-partial")
    assert result.exit_code == 1, result.output
    assert "bad.pdf: parse failed: corrupt or truncated PDF" in result.output
    assert "ingested" in result.output and "embeddings/s" in result.output
    (tmp_path / "bad.pdf").unlink()
    result = cli("ingest", str(tmp_path), "--tenant", "cli-partial", "--sync")
    assert result.exit_code == 0, result.output
    row = [line for line in result.output.splitlines() if line.startswith("│")][-1]
    assert [c.strip() for c in row.strip("│").split("│")] == ["0", "0", "1", "0", "0", "0", "0"]
