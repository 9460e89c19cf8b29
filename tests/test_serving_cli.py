"""`sluice key create/revoke`: the secret is printed once, only its hash is stored, revocation is by id."""

from __future__ import annotations

import hashlib
import re

import pytest


def test_key_create_stores_only_the_hash_and_revoke(cli, admin, db, new_tenant):
    tenant = new_tenant("key")
    result = cli("key", "create", "--tenant", tenant)
    assert result.exit_code == 0, result.output
    secret = re.search(r"^(sk_\w+_\S+)$", result.output, re.M).group(1)
    key_id = re.search(r"key id: (\w+)", result.output).group(1)
    rows = admin.execute("SELECT key_hash FROM api_keys WHERE key_id = %s", (key_id,)).fetchall()
    assert rows == [(hashlib.sha256(secret.encode()).hexdigest(),)]
    with db.shared() as conn:
        assert conn.execute("SELECT resolve_api_key(%s)", (rows[0][0],)).fetchone()[0] == tenant
    assert cli("key", "revoke", key_id).exit_code == 0
    with db.shared() as conn:
        assert conn.execute("SELECT resolve_api_key(%s)", (rows[0][0],)).fetchone()[0] is None


def test_app_role_cannot_read_the_key_table(db):
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.shared() as conn:
        conn.execute("SELECT * FROM api_keys")


def test_key_for_unknown_tenant_and_unknown_id_exit_2(cli):
    assert cli("key", "create", "--tenant", "no-such-tenant").exit_code == 2
    result = cli("key", "revoke", "nope")
    assert result.exit_code == 2 and "no API key with id 'nope'" in result.output


def test_create_key_cannot_target_another_tenant(db, new_tenant):
    import psycopg

    tenant = new_tenant("k")
    with pytest.raises(psycopg.errors.RaiseException), db.shared() as conn:
        conn.execute("SELECT create_api_key('x1', %s)", ("0" * 64,))  # no tenant on the transaction
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT create_api_key('x2', %s)", ("1" * 64,)).fetchone()[0] == tenant


def test_demo_api_stop_waits_then_kills_what_ignores_sigterm(cli, migrated, tmp_path, monkeypatch):
    """`demo-api --stop` returns only once both process groups are gone: SIGTERM, then SIGKILL after its grace."""
    import signal
    import subprocess
    import sys

    from cli import demo as cli_demo_api

    stubborn_code = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print(1, flush=True); time.sleep(600)"
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    stubborn = subprocess.Popen([sys.executable, "-c", stubborn_code], stdout=subprocess.PIPE, start_new_session=True)
    stubborn.stdout.readline()  # its SIGTERM is ignored from here on
    (tmp_path / "demo-api.pids").write_text(f"{polite.pid} {stubborn.pid}")
    monkeypatch.setattr(cli_demo_api, "STOP_GRACE_S", 3)
    result = cli("demo-api", "--stop", settings=migrated.model_copy(update={"data_dir": tmp_path}))
    assert result.exit_code == 0, result.output
    assert polite.poll() == -signal.SIGTERM and stubborn.poll() == -signal.SIGKILL  # both gone on return
    assert f"process group {stubborn.pid} still running 3 s after SIGTERM: killed" in result.output
    assert not (tmp_path / "demo-api.pids").exists()


def test_shipped_local_llm_config_answers_within_the_query_tasks_limits():
    """configs/llm-local.yaml's deadline ends before the worker's soft limit: slow models answer extractively."""
    from serving.worker import QUERY_LIMIT_S, QUERY_SOFT_LIMIT_S
    from sluice.config import load_config
    from sluice.settings import PROJECT_ROOT

    generator = load_config(PROJECT_ROOT / "configs" / "llm-local.yaml").generator
    assert generator.fallback_extractive
    assert generator.deadline_s < QUERY_SOFT_LIMIT_S < QUERY_LIMIT_S
