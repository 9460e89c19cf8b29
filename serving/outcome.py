"""What a worker task returns, typed: its value (an answer, an ingest summary) or our error.

The worker builds a `TaskOutcome`; the API parses the stored result into one, once, instead of
looking for an "error" key. The wire form is the one Celery stored before this type, so results
already in the backend still parse: the value itself, or `{"error": {"type": ..., "message": ...}}`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TaskError:
    """A refused task: the exception's class name (it picks the HTTP status) and its message."""

    type: str
    message: str


@dataclass(frozen=True)
class TaskOutcome:
    """Exactly one of `value` (the task's result) and `error`."""

    value: Any = None
    error: TaskError | None = None

    @classmethod
    def ok(cls, value: Any) -> TaskOutcome:
        return cls(value=value)

    @classmethod
    def failed(cls, exc: Exception) -> TaskOutcome:
        return cls(error=TaskError(type(exc).__name__, str(exc)))

    def to_wire(self) -> Any:
        """The JSON-able form Celery stores."""
        return {"error": asdict(self.error)} if self.error is not None else self.value

    @classmethod
    def from_wire(cls, body: Any) -> TaskOutcome:
        """Parse a stored result: an error is a mapping whose only key is `error`."""
        err = body["error"] if isinstance(body, dict) and body.keys() == {"error"} else None
        if isinstance(err, dict):
            return cls(error=TaskError(str(err.get("type", "SluiceError")), str(err.get("message", ""))))
        return cls(value=body)
