"""Spans of one query in-process, captured with the SDK's in-memory exporter: the worker-side stages
continue the trace carried in a `traceparent` header, and the API's trace id helpers agree."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sluice import logs, tracing


@pytest.fixture(scope="module")
def exporter(migrated):
    tracing.setup_tracing(migrated, "sluice-test")  # no-op if another test installed a provider first
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def test_answer_stages_continue_the_callers_trace(exporter, db, embedder, pipeline, new_tenant, tmp_path):
    from tasks.answer import answer_question
    from tasks.ingest import ingest_source

    tenant = new_tenant("trace")
    (tmp_path / "bees.md").write_text("# Bees\n\nHoneybees tell hive mates where flowers are with a waggle dance.\n")
    assert ingest_source(db, tenant, pipeline, embedder, tmp_path, 1_000_000).ingested == 1
    with tracing.tracer().start_as_current_span("api request") as root:
        carrier = tracing.inject({})
        api_trace = tracing.trace_id()
        assert logs.context()["trace_id"] == api_trace  # log lines pick the trace id up unbound
    exporter.clear()
    with tracing.continued(carrier, "sluice.query") as task:
        answer_question(db, tenant, pipeline, embedder, "How do bees share where flowers are?")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"sluice.query", "embed", "retrieve", "generate"} <= set(spans), sorted(spans)
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {api_trace}
    assert spans["sluice.query"].parent.span_id == root.get_span_context().span_id
    for stage in ("embed", "retrieve", "generate"):
        assert spans[stage].parent.span_id == task.get_span_context().span_id
    assert spans["retrieve"].attributes["sluice.hits"] >= 1


def test_no_trace_outside_a_span():
    assert tracing.trace_id() is None
    assert "trace_id" not in logs.context()


def test_mcp_tool_spans_join_the_http_request_and_the_callers_trace(exporter, migrated, db, new_tenant):
    """A tool call over /mcp is one span inside the request's server span, in the trace of the caller's traceparent."""
    import anyio

    from serving.auth import create_key
    from serving.mcp import mount
    from tests.mcp_support import call, http_session
    from tests.serving_support import TEST_REDIS, ApiServer

    key = create_key(db, new_tenant("mcptrace")).secret
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
    exporter.clear()
    with ApiServer(migrated.model_copy(update={"broker_url": TEST_REDIS}), beside=mount) as api:

        async def list_them() -> dict:
            async with http_session(api.url, key, traceparent=traceparent) as session:
                return await call(session, "list_collections")

        assert anyio.run(list_them) == {"collections": []}
    spans = exporter.get_finished_spans()
    tool = next(s for s in spans if s.name == "mcp list_collections")
    requests = {s.context.span_id for s in spans if s.name == "POST /mcp"}
    assert format(tool.context.trace_id, "032x") == caller_trace
    assert tool.parent is not None and tool.parent.span_id in requests
