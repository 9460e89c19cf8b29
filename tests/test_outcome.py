"""The worker's result envelope: what the worker stores is what the API parses back."""

from serving.outcome import TaskError, TaskOutcome
from sluice.errors import QueryError


def test_an_error_round_trips_with_its_type_and_message():
    wire = TaskOutcome.failed(QueryError("filters: too many keys")).to_wire()
    assert wire == {"error": {"type": "QueryError", "message": "filters: too many keys"}}
    assert TaskOutcome.from_wire(wire) == TaskOutcome(error=TaskError("QueryError", "filters: too many keys"))


def test_a_value_is_stored_as_it_is_and_never_read_as_an_error():
    summary = {"ingested": 1, "failed": 1, "errors": ["bad.pdf: parse failed"]}
    assert TaskOutcome.ok(summary).to_wire() is summary
    parsed = TaskOutcome.from_wire(summary)
    assert parsed.error is None and parsed.value == summary
    # Only a mapping whose one key is "error" is an error: a value that merely has such a key is a value.
    assert TaskOutcome.from_wire({"error": "x", "answer": "y"}).error is None
