"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.errors import QueryError
from sluice.filters import check_filter, compile_filter
from sluice.jsonwalk import storable_problem

Question = Annotated[str, Field(min_length=1, max_length=4000, pattern=r"\S")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Runs before pydantic or FastAPI look inside the body: the size limits first (cheap, and a
        # 200,000-key filter is refused without being walked), then PostgreSQL's own: text and jsonb
        # hold neither U+0000 nor a lone surrogate, jsonb no NaN or Infinity. Both walk iteratively,
        # so a body nested hundreds of levels deep is a 422 here, never a RecursionError.
        cls._within_limits(data)
        if problem := storable_problem(data):
            raise ValueError(problem)
        return data

    @classmethod
    def _within_limits(cls, data: Any) -> None:
        """Raise ValueError naming the limit a raw body exceeds (bodies with nested input override this)."""


class QueryRequest(_Body):
    question: Question
    filters: dict[str, Any] | None = Field(
        default=None,
        description="Metadata filters, passed to retrieval (limits in sluice/filters.py: depth, keys, sizes).",
    )
    collection: str | None = Field(default=None, max_length=200)
    stream: bool = Field(default=False, description="Answer as Server-Sent Events (token, done).")

    @classmethod
    def _within_limits(cls, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("filters"), dict):  # other types: the field says why
            try:
                check_filter(data.get("filters"))
            except QueryError as exc:
                raise ValueError(str(exc)) from None

    @field_validator("filters")
    @classmethod
    def _compiles(cls, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        # The worker compiles the same filter with the same function: refused here, it is never queued.
        try:
            compile_filter(filters)
        except QueryError as exc:
            raise ValueError(str(exc)) from None
        return filters


MAX_SEARCH_K = 50


class SearchOptions(_Body):
    """A search's own retrieval: how many chunks and which ranking (default: the served config's)."""

    k: int | None = Field(default=None, ge=1, le=MAX_SEARCH_K, description="Chunks to return (default: config's k).")
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        default=None, description="dense (meaning), lexical (exact words) or hybrid (both); default: the config's."
    )


class SearchRequest(QueryRequest, SearchOptions):
    """A retrieval without an answer: the chunks a query would cite from, with their text."""

    stream: Literal[False] = False


class Citation(BaseModel):
    document: str
    document_id: str = Field(description="The document's public id: a random UUID, stable across re-ingestion.")
    span: tuple[int, int]
    score: float
    metadata: dict[str, Any] = Field(default_factory=dict, description="The metadata the document was given.")


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
    tokens_per_s: float | None = Field(description="Decode speed; null when none was measured (extractive, one piece).")
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool = Field(description="True when the server reported no usage and tokens were counted.")
    cost_usd: float
    attempts: list[str] = Field(description="Failed attempts (tier, replica, reason) before the answer.")


class QueryResponse(BaseModel):
    answer_id: str = Field(description="The answer's stable id: rate it with POST /v1/feedback.")
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
    reranker: str | None = Field(
        default=None,
        description="The rerank model (name@weights hash) when the served config reranks; citation scores are then "
        "its scores. Null without a rerank stage.",
    )


class JobAccepted(BaseModel):
    job_id: str
    kind: Literal["query", "ingest"]
    status: str


Metadata = Annotated[
    dict[str, Any] | None,
    Field(
        description="Document metadata (a JSON object: at most 16 KiB, 4 levels; docs/retrieval.md), "
        "filterable as doc.<key>.",
    ),
]


def _checked_metadata(value: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    from tasks.metadata import MetadataError, check_object

    if value is None:
        return None
    try:
        return check_object(value)
    except MetadataError as exc:
        raise ValueError(f"{where}: {exc}") from None


class UploadedFile(_Body):
    name: str = Field(min_length=1, max_length=255, description="Base name only, e.g. report.pdf.")
    content_base64: str
    metadata: Metadata = None

    @model_validator(mode="after")
    def _metadata(self) -> UploadedFile:
        _checked_metadata(self.metadata, f"file {self.name!r}: metadata")
        return self


class QueryJob(QueryRequest):
    kind: Literal["query"]
    stream: Literal[False] = False


class IngestJob(_Body):
    kind: Literal["ingest"]
    source: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Folder or file in SLUICE_INGEST_ROOT/<tenant>."
    )
    files: list[UploadedFile] | None = Field(default=None, min_length=1, max_length=100)
    metadata: Metadata = Field(
        default=None, description="Metadata every document of the job gets, under each document's own."
    )

    @model_validator(mode="after")
    def _one_of(self) -> IngestJob:
        if (self.source is None) == (self.files is None):
            raise ValueError("give exactly one of `source` (a name under the ingest root) or `files` (uploads)")
        _checked_metadata(self.metadata, "metadata")
        return self


JobRequest = Annotated[Union[QueryJob, IngestJob], Field(discriminator="kind")]


class JobStatus(BaseModel):
    job_id: str
    kind: Literal["query", "ingest"]
    status: Literal["queued", "running", "succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None


class CitedSpan(_Body):
    document: str = Field(min_length=1, max_length=1000, description="A source id (a citation's `document`).")
    span: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="[start, end) character offsets in the document's text; omit for the whole document."
    )


class FeedbackRequest(_Body):
    answer_id: str = Field(min_length=1, max_length=64, description="An `answer_id` from a /v1/query response.")
    rating: Literal["up", "down"]
    correction: str | None = Field(
        default=None, min_length=1, max_length=20000, pattern=r"\S", description="What the answer should have said."
    )
    evidence: CitedSpan | None = Field(default=None, description="The document (and span) that should have been cited.")


class FeedbackAccepted(BaseModel):
    feedback_id: str
    answer_id: str
    rating: Literal["up", "down"]
    config_id: str


class Problem(BaseModel):
    detail: str
