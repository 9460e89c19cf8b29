"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Question = Annotated[str, Field(min_length=1, max_length=4000, pattern=r"\S")]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_problem(value: Any) -> str | None:
    """Why a string somewhere in `value` cannot be stored as PostgreSQL text/jsonb, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "strings must not contain the NUL character (U+0000)"
        if _SURROGATE.search(value):
            return "strings must be valid Unicode: remove the unpaired surrogate (U+D800-U+DFFF)"
        return None
    items = value.items() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        for part in item if isinstance(value, dict) else (item,):
            if problem := _text_problem(part):
                return problem
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # PostgreSQL text and jsonb hold neither U+0000 nor a lone surrogate (in a question, a filter key or
        # value): refuse them here as a 422, not later as a 500 from the jobs insert.
        if problem := _text_problem(data):
            raise ValueError(problem)
        return data


class QueryRequest(_Body):
    question: Question
    filters: dict[str, Any] | None = Field(default=None, description="Metadata filters, passed to retrieval.")
    collection: str | None = Field(default=None, max_length=200)
    stream: bool = Field(default=False, description="Answer as Server-Sent Events (token, done).")


class Citation(BaseModel):
    document: str
    document_id: str = Field(description="The document's public id: a random UUID, stable across re-ingestion.")
    span: tuple[int, int]
    score: float


class Route(BaseModel):
    policy: str
    tier: str
    reason: str


class Generation(BaseModel):
    """Who answered and at what cost (extractive answers: model `extractive`, cost 0)."""

    model: str
    tier: str = Field(description="The tier that answered; differs from route.tier after a fallback.")
    replica: str
    route: Route | None
    ttft_ms: float
    total_ms: float
    tokens_per_s: float
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool = Field(description="True when the server reported no usage and tokens were counted.")
    cost_usd: float
    attempts: list[str] = Field(description="Failed attempts (tier, replica, reason) before the answer.")


class QueryResponse(BaseModel):
    answer: str
    citations: list[Citation]
    config_id: str
    index_id: str
    model_tier: str
    corpus_version: int
    cached: bool
    task_id: str | None
    timings_ms: dict[str, float]
    generation: Generation | None = None  # absent from answers cached before it existed


class JobAccepted(BaseModel):
    job_id: str
    kind: Literal["query", "ingest"]
    status: str


class UploadedFile(_Body):
    name: str = Field(min_length=1, max_length=255, description="Base name only, e.g. report.pdf.")
    content_base64: str


class QueryJob(QueryRequest):
    kind: Literal["query"]
    stream: Literal[False] = False


class IngestJob(_Body):
    kind: Literal["ingest"]
    source: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Folder or file in SLUICE_INGEST_ROOT/<tenant>."
    )
    files: list[UploadedFile] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_of(self) -> IngestJob:
        if (self.source is None) == (self.files is None):
            raise ValueError("give exactly one of `source` (a name under the ingest root) or `files` (uploads)")
        return self


JobRequest = Annotated[Union[QueryJob, IngestJob], Field(discriminator="kind")]


class JobStatus(BaseModel):
    job_id: str
    kind: Literal["query", "ingest"]
    status: Literal["queued", "running", "succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None


class Problem(BaseModel):
    detail: str
