"""The MCP `feedback` tool: an agent rates an answer it got, through the code of POST /v1/feedback."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field

from serving.api.feedback import submit_feedback
from serving.api.idempotent import idempotent
from serving.mcp.call import run_tool
from serving.mcp.tools import tool
from serving.schemas import CitedSpan, FeedbackRequest


@tool(read_only=False)
async def feedback(
    answer_id: Annotated[str, Field(max_length=64, description="The answer_id of an `answer` result.")],
    rating: Annotated[Literal["up", "down"], Field(description="up: the answer was right; down: it was not.")],
    ctx: Context,
    correction: Annotated[str | None, Field(max_length=20000, description="What the answer should have said.")] = None,
    evidence: Annotated[
        CitedSpan | None, Field(description="The document (and [start, end) span) that should have been cited.")
    ] = None,
    idempotency_key: Annotated[
        str | None, Field(min_length=1, max_length=255, description="Retry-safe key: a repeat records nothing new.")
    ] = None,
) -> dict:
    """Rate one of this tenant's answers, optionally with a correction or the evidence it should have cited.

    Ratings become evaluation data (`sluice feedback export`). Returns feedback_id and the answer's config_id.
    """

    def work(state, tenant) -> dict:
        req = FeedbackRequest(answer_id=answer_id, rating=rating, correction=correction, evidence=evidence)
        _, out, _ = idempotent(
            state,
            tenant,
            idempotency_key,
            "/v1/feedback",
            req.model_dump(),
            lambda: submit_feedback(state, tenant, req),
        )
        return out

    return await run_tool(ctx, "feedback", work)
