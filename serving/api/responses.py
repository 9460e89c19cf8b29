"""JSON responses whose bytes are stable: an idempotent replay is byte-identical to the first answer."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class CanonicalJSON(JSONResponse):
    """Sorted keys, so a replayed response (stored as jsonb) is byte-identical to the first."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(status: int, body: dict, replayed: bool) -> JSONResponse:
    """A canonical JSON response; a 202 names its job's URL, a replay says so in a header."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if status == 202 and "job_id" in body:
        headers["Location"] = f"/v1/jobs/{body['job_id']}"
    return CanonicalJSON(body, status_code=status, headers=headers)
