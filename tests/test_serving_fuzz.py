"""Fuzz every operation of the OpenAPI schema with schemathesis: no input may produce a 5xx."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from serving.auth import create_key
from sluice.db import create_tenant
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def fuzz_env(db, stack_settings, start_stack):
    server = start_stack(stack_settings("fuzz", ingest_root=SAMPLE, query_timeout_s=10.0, config_path=None))
    tenant = f"fuzz-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    return server, create_key(db, tenant).secret


def test_no_server_errors(fuzz_env):
    # The schemathesis pytest plugin does not run under this pytest; drive its strategies directly.
    server, key = fuzz_env
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/query", "/v1/jobs", "/v1/jobs/{job_id}", "/readyz"}
    failures: list[str] = []
    statuses: list[tuple[str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            statuses.append((case.path, response.status_code))
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text}")

        check()
    assert not failures, "\n".join(failures[:5])
    assert len(statuses) >= 60  # the fuzzer really ran
    assert ("/v1/query", 200) in statuses and ("/v1/jobs", 202) in statuses  # and reached the happy paths
