"""Pipeline configs: frozen, versioned data whose hashes name indexes and runs.

`index_id` hashes the stages that change stored vectors (parser, chunker, embedder);
`config_id` hashes the whole config. Every stored chunk carries its `index_id`, every
evaluation run and the serving champion name a `config_id`.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sluice.errors import ConfigError
from sluice.hardware import resolve_precision

CONFIG_VERSION = 1
M = TypeVar("M", bound=BaseModel)
ONNX_PRECISIONS = ("float32", "int8")
INDEX_FIELDS = ("version", "parser", "chunker", "embedder")  # what an index_id hashes


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _drop_defaults(model: BaseModel, data: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Leave fields added after version 1 out of a dump at their defaults, so existing config ids stay valid."""
    for name in names:
        if name in data and data[name] == type(model).model_fields[name].default:
            del data[name]
    return data


class _Chunker(_Frozen):
    """Options every chunker has (both change stored vectors, so both are part of the index id when set)."""

    contextual: bool = Field(
        default=False,
        description="Embed and index each chunk under a short header (document title, section path, file name); "
        "the stored span and the text given to the generator stay the chunk's own.",
    )
    max_tokens: int | Literal["auto"] | None = Field(
        default=None,
        description="Split chunks longer than this many of the embedder's tokens (header and special tokens "
        "included); auto = the embedder's window (256 for all-MiniLM-L6-v2).",
    )

    @field_validator("max_tokens")
    @classmethod
    def _room(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 16 <= value <= 8192:
            raise ValueError(f"max_tokens {value} is out of range: use 16..8192 or 'auto'")
        return value

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), ("contextual", "max_tokens"))


class _Overlapping(_Chunker):
    """A chunker whose overlap must stay below its size: `overlap_below` names (overlap field, size field)."""

    overlap_below: ClassVar[tuple[str, str]]

    @model_validator(mode="after")
    def _check(self):
        small, large = self.overlap_below
        if getattr(self, small) >= getattr(self, large):
            raise ValueError(f"{small} ({getattr(self, small)}) must be smaller than {large} ({getattr(self, large)})")
        return self


class ParserConfig(_Frozen):
    kind: Literal["unstructured"] = "unstructured"
    # "auto" picks per format; PDFs get the text layer first, then OCR when it is empty.
    pdf_strategy: Literal["auto", "fast", "ocr_only"] = "auto"
    ocr_languages: str = "eng"


class RecursiveChunker(_Overlapping):
    overlap_below = ("chunk_overlap", "chunk_size")
    kind: Literal["recursive"] = "recursive"
    chunk_size: int = Field(default=1000, ge=50, le=20000, description="Characters per chunk.")
    chunk_overlap: int = Field(default=150, ge=0, le=5000)


class FixedTokensChunker(_Overlapping):
    overlap_below = ("overlap_tokens", "chunk_tokens")
    kind: Literal["fixed_tokens"] = "fixed_tokens"
    # Tokens of the embedding model's own tokenizer; 256 is all-MiniLM-L6-v2's input limit.
    chunk_tokens: int = Field(default=256, ge=8, le=8192, description="Tokens per chunk.")
    overlap_tokens: int = Field(default=32, ge=0, le=4096)


class StructureChunker(_Chunker):
    kind: Literal["structure"] = "structure"
    # Sections start at markdown headers / unstructured Title elements; long sections are split further.
    max_chars: int = Field(default=2000, ge=100, le=50000, description="Longest section kept whole.")
    min_chars: int = Field(default=200, ge=0, le=10000, description="Shorter sections merge into the next.")


class SentenceChunker(_Overlapping):
    overlap_below = ("overlap", "window")
    kind: Literal["sentence"] = "sentence"
    window: int = Field(default=5, ge=1, le=100, description="Sentences per chunk.")
    overlap: int = Field(default=1, ge=0, le=99, description="Sentences shared with the previous chunk.")
    max_chars: int = Field(default=2000, ge=100, le=50000)


class SemanticChunker(_Chunker):
    kind: Literal["semantic"] = "semantic"
    # A boundary goes where the cosine distance between neighbouring sentences exceeds this percentile.
    breakpoint_percentile: float = Field(default=90.0, gt=0, lt=100)
    min_sentences: int = Field(default=2, ge=1, le=50)
    max_chars: int = Field(default=2000, ge=100, le=50000)


class ParentChildChunker(_Overlapping):
    overlap_below = ("child_overlap", "child_chars")
    kind: Literal["parent_child"] = "parent_child"
    parent_max_chars: int = Field(default=3000, ge=200, le=100000, description="Parent (context) section size.")
    child_chars: int = Field(default=400, ge=50, le=10000, description="Child (retrieved) chunk size.")
    child_overlap: int = Field(default=50, ge=0, le=5000)


ChunkerConfig = Annotated[
    Union[RecursiveChunker, FixedTokensChunker, StructureChunker, SentenceChunker, SemanticChunker, ParentChildChunker],
    Field(discriminator="kind"),
]


class EmbedderConfig(_Frozen):
    kind: Literal["sentence_transformers"] = "sentence_transformers"
    model: str = Field(default="all-MiniLM-L6-v2", description="Packaged model name or a local folder.")
    # Below the model's own dimension: its vectors truncated to `dim` (and normalised again), another space.
    dim: int = Field(default=384, ge=8, le=4096)
    normalize: bool = True
    # Part of the index id (the embedder stage is): vectors of two precisions never share an index.
    # `auto` is resolved when the config is read (sluice/hardware.py), so a stored config is always concrete.
    # The default is `auto`: bfloat16 passed the quality bar and runs 1.9x float32 where the CPU has bf16
    # instructions (docs/benchmarks.md, "Embedding precision"); other CPUs keep float32 and their ids.
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        default="auto",
        validate_default=True,
        description="Arithmetic of the encoder: float32; bfloat16 (autocast, fast on CPUs with AVX-512 BF16 "
        "or AMX); int8 (dynamic quantisation of the linear layers); auto = bfloat16 where the CPU has bf16 "
        "instructions, else float32.",
    )

    # Who runs the model: torch, or ONNX Runtime on a graph exported locally from the same weights
    # (tasks/embed_onnx.py). Part of the index id when not torch, so the two never share an index.
    backend: Literal["torch", "onnx"] = Field(
        default="torch",
        description="torch (sentence-transformers); onnx = ONNX Runtime on a graph exported from the same "
        "weights on first use and cached under data_dir (float32: fused graph; int8: dynamic quantisation).",
    )

    @model_validator(mode="before")
    @classmethod
    def _auto_under_onnx(cls, data: Any) -> Any:
        # ONNX Runtime runs no bfloat16 (ONNX_PRECISIONS): there `auto` means float32, not a refusal.
        if isinstance(data, dict) and data.get("backend") == "onnx" and data.get("precision", "auto") == "auto":
            return {**data, "precision": "float32"}
        return data

    @field_validator("precision")
    @classmethod
    def _concrete(cls, value: str) -> str:
        return resolve_precision(value)

    @model_validator(mode="after")
    def _backend_runs_precision(self) -> EmbedderConfig:
        if self.backend == "onnx" and self.precision not in ONNX_PRECISIONS:
            raise ValueError(f"backend 'onnx' runs precision {' or '.join(ONNX_PRECISIONS)}, not {self.precision!r}")
        return self

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), ("backend",))


class RetrievalConfig(_Frozen):
    """How chunks are found: dense (HNSW cosine), lexical (Okapi BM25) or hybrid (a fusion of both rankings)."""

    mode: Literal["dense", "lexical", "hybrid"] = "dense"
    k: int = Field(default=5, ge=1, le=200)
    ef_search: int = Field(default=100, ge=10, le=1000)
    lexical_query: Literal["any", "websearch"] = Field(
        default="any",
        description="any = BM25 over the query's terms; websearch = also require websearch_to_tsquery syntax (AND).",
    )
    k1: float = Field(default=1.2, ge=0, le=10, description="BM25 term-frequency saturation.")
    b: float = Field(default=0.75, ge=0, le=1, description="BM25 length normalisation (0 = none, 1 = full).")
    fusion: Literal["rrf", "convex"] = Field(
        default="rrf",
        description="Hybrid: rrf = weighted reciprocal rank; convex = weighted mean of min-max normalised scores.",
    )
    candidates: int = Field(default=50, ge=1, le=1000, description="Hybrid: rows taken from each ranker.")
    rrf_k: int = Field(default=60, ge=1, le=10000, description="Hybrid: RRF constant in w / (rrf_k + rank).")
    dense_weight: float = Field(default=1.0, ge=0, le=100, description="Hybrid: weight of the dense ranking.")
    lexical_weight: float = Field(default=1.0, ge=0, le=100, description="Hybrid: weight of the BM25 ranking.")

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), _RETRIEVAL_V1_EXTRAS)


_RETRIEVAL_V1_EXTRAS = ("lexical_query", "k1", "b", "fusion", "candidates", "rrf_k", "dense_weight", "lexical_weight")


class CrossEncoderRerank(_Frozen):
    """Re-score the fused candidates with a cross-encoder (query and chunk read together); keep the best k."""

    kind: Literal["cross_encoder"] = "cross_encoder"
    model: str = Field(description="A local sentence-transformers CrossEncoder folder, or a hub id already cached.")
    top_n: int = Field(default=20, ge=1, le=200, description="Candidates taken from retrieval and re-scored.")
    batch_size: int = Field(default=32, ge=1, le=1024)
    max_chars: int = Field(default=2000, ge=100, le=100000, description="Characters of each chunk scored.")


RerankConfig = Annotated[Union[CrossEncoderRerank], Field(discriminator="kind")]


class SingleRouting(_Frozen):
    """Every question goes to one tier."""

    policy: Literal["single"] = "single"
    tier: str = "default"


class RulesRouting(_Frozen):
    """Send a question to the large tier when any rule fires; otherwise to the small tier."""

    policy: Literal["rules"] = "rules"
    small: str = "small"
    large: str = "large"
    max_small_words: int = Field(default=18, ge=1, description="Longer questions go to the large tier.")
    large_question_types: tuple[Literal["lookup", "compare", "explain", "why", "list"], ...] = (
        "compare",
        "explain",
        "why",
    )
    max_small_documents: int = Field(default=2, ge=1, description="More distinct documents in top-k → large.")
    filters_to_small: bool = Field(default=True, description="A filtered query is narrow: keep it small.")


class ClassifierRouting(_Frozen):
    """A logistic regression on the query embedding predicts whether the small tier suffices."""

    policy: Literal["classifier"] = "classifier"
    small: str = "small"
    large: str = "large"
    model_path: str = Field(description="File written by `sluice router train` (relative to data_dir or absolute).")
    model_sha256: str = Field(min_length=64, max_length=64, description="Versions the model with the config.")


def _routing_policy(value: Any) -> str | None:
    # `policy` may be omitted, as before routing had several policies: it then means "single".
    return value.get("policy", "single") if isinstance(value, dict) else getattr(value, "policy", None)


RoutingConfig = Annotated[
    Union[
        Annotated[SingleRouting, Tag("single")],
        Annotated[RulesRouting, Tag("rules")],
        Annotated[ClassifierRouting, Tag("classifier")],
    ],
    Discriminator(_routing_policy),
]


class ExtractiveGenerator(_Frozen):
    kind: Literal["extractive"] = "extractive"
    max_sentences: int = Field(default=3, ge=1, le=20)


class ModelPrice(_Frozen):
    """US dollars per million tokens."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """US dollars for reading `input_tokens` and writing `output_tokens`."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages you are given. "
    "Cite the passage supporting each statement with its number in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that you cannot answer from the documents. "
    "Be brief."
)


class PromptConfig(_Frozen):
    """What the `openai` generator sends a model: its instructions, how passages are marked, how much fits."""

    system: str = Field(default=DEFAULT_SYSTEM_PROMPT, min_length=1, description="The system prompt.")
    citation: str = Field(
        default="[{n}]",
        description="How passage n is marked in the prompt, and so how answers cite it; must contain {n} once.",
    )
    context_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Context budget in the model's own tokens (counted with the tier's `tokenizer`); "
        "unset, or a tier without a tokenizer: `max_context_chars` characters.",
    )

    @field_validator("citation")
    @classmethod
    def _one_number(cls, value: str) -> str:
        # A lone brace outside {n}, either way round, would make str.format fail on every prompt.
        if value.count("{n}") != 1 or value == "{n}" or any(b in value.replace("{n}", "") for b in "{}"):
            raise ValueError(f"citation {value!r} must contain {{n}} once, with a mark around it, e.g. '[{{n}}]'")
        return value


class TierConfig(_Frozen):
    """One model deployed on one or more OpenAI-compatible replicas (base URLs ending in /v1)."""

    model: str
    replicas: tuple[str, ...] = Field(min_length=1)
    balancer: Literal["round_robin", "least_outstanding", "latency_ewma"] = "least_outstanding"
    timeout_s: float = Field(default=30.0, gt=0, description="Per attempt: connect + whole response.")
    max_tokens: int = Field(default=512, ge=1)
    # Azure OpenAI takes its key in an `api-key` header; everyone else in `Authorization: Bearer`.
    key_header: Literal["authorization", "api-key"] = "authorization"
    # Ask for token usage in the stream (stream_options.include_usage); some older servers reject the
    # field with HTTP 400: set false there and usage is counted locally.
    stream_usage: bool = True
    tokenizer: str | None = Field(
        default=None,
        description="The model's own vocabulary, for `prompt.context_tokens`: a packaged model name "
        "(smollm2-135m, gemma3-270m) or a GGUF path (needs the `llm` extra).",
    )

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), ("tokenizer",))


class BreakerConfig(_Frozen):
    failure_threshold: int = Field(default=3, ge=1, description="Consecutive failures that open the circuit.")
    cooldown_s: float = Field(default=10.0, gt=0, description="Open time before one half-open probe.")


class OpenAIGenerator(_Frozen):
    """Any OpenAI-compatible chat-completions endpoint, in tiers of replicas."""

    kind: Literal["openai"] = "openai"
    tiers: dict[str, TierConfig] = Field(min_length=1)
    fallback: tuple[str, ...] = Field(default=(), description="Tier order tried after the routed tier fails.")
    stream: bool = True
    deadline_s: float = Field(default=60.0, gt=0, description="Whole request, all retries and fallbacks.")
    attempts_per_tier: int = Field(default=2, ge=1)
    breaker: BreakerConfig = BreakerConfig()
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Model name → price.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_context_chars: int = Field(default=12000, ge=100)
    prompt: PromptConfig | None = Field(default=None, description="Unset: the default PromptConfig.")
    resume_mid_stream: bool = Field(
        default=False,
        description="When a replica fails after text was streamed, replay the request on another replica of the "
        "same tier and pass on only what follows the text already sent (needs temperature 0: a replay that "
        "diverges is an error).",
    )
    fallback_extractive: bool = Field(
        default=False,
        description="When every tier fails (or answers only whitespace) before any text was sent, answer with "
        "the extractive answerer (free, no LLM) instead of failing.",
    )

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), ("prompt", "resume_mid_stream", "fallback_extractive"))

    @model_validator(mode="after")
    def _deterministic_replay(self) -> OpenAIGenerator:
        if self.resume_mid_stream and self.temperature != 0:
            raise ValueError("resume_mid_stream needs temperature 0 (a replay must produce the same text)")
        return self

    @model_validator(mode="after")
    def _known_fallbacks(self) -> OpenAIGenerator:
        unknown = [t for t in self.fallback if t not in self.tiers]
        if unknown:
            raise ValueError(f"fallback names unknown tiers {unknown}; declared tiers: {sorted(self.tiers)}")
        return self


GeneratorConfig = Annotated[Union[ExtractiveGenerator, OpenAIGenerator], Field(discriminator="kind")]


class PipelineConfig(_Frozen):
    """The whole pipeline, stage by stage."""

    version: int = CONFIG_VERSION
    name: str = Field(default="default", description="Label only; not part of any id.")
    parser: ParserConfig = ParserConfig()
    chunker: ChunkerConfig = RecursiveChunker()
    embedder: EmbedderConfig = EmbedderConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    routing: RoutingConfig = SingleRouting()
    generator: GeneratorConfig = ExtractiveGenerator()
    rerank: RerankConfig | None = None

    @model_serializer(mode="wrap")
    def _drop_new_defaults(self, handler: Any) -> dict[str, Any]:
        return _drop_defaults(self, handler(self), ("rerank",))

    @model_validator(mode="after")
    def _routed_tiers_exist(self) -> PipelineConfig:
        if isinstance(self.generator, ExtractiveGenerator):
            if not isinstance(self.routing, SingleRouting):
                raise ValueError(f"routing policy {self.routing.policy!r} needs generator kind 'openai' with tiers")
            return self
        wanted = (
            {self.routing.tier} if isinstance(self.routing, SingleRouting) else {self.routing.small, self.routing.large}
        )
        missing = sorted(wanted - set(self.generator.tiers))
        if missing:
            raise ValueError(f"routing names tiers {missing} that generator.tiers does not declare")
        return self

    def body(self) -> dict[str, Any]:
        """The config as hashed and stored: every field but its name."""
        return self.model_dump(mode="json", exclude={"name"})

    def index_body(self) -> dict[str, Any]:
        """The stages that change stored vectors (`INDEX_FIELDS`): the index's identity."""
        return self.model_dump(mode="json", include=set(INDEX_FIELDS))

    def canonical_json(self) -> str:
        """The body stored beside the config id, in the form its id hashes."""
        return canonical_json(self.body())

    # Cached: the model is frozen, and serving reads the ids several times per query (a dump and a
    # hash cost ~0.3 ms each). `model_copy` drops them, since a copy with `update` is another config.
    @cached_property
    def config_id(self) -> str:
        """Hash of the whole config (its name excluded)."""
        return _digest(self.body())

    @cached_property
    def index_id(self) -> str:
        """Hash of the stages that change stored vectors."""
        return _digest(self.index_body())

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> PipelineConfig:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("config_id", "index_id"):
            copy.__dict__.pop(cached, None)
        return copy


def canonical_json(value: Any) -> str:
    """Serialise with sorted keys and no whitespace so equal configs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a config mapping, naming the source and the offending field on error."""
    return validated(PipelineConfig, data, source)


def validated(model: type[M], data: Any, source: str) -> M:
    """Validate `data` as `model`; ConfigError naming the source and the first offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: field {where!r}: {first['msg']}") from exc


def read_yaml_mapping(path: Path, what: str, fix: str, shape: str) -> dict[str, Any]:
    """The mapping a YAML file holds; ConfigError naming the file (`what`) when it is missing, invalid or no mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist: {fix}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be {shape}")
    return data


def load_config(path: Path | None) -> PipelineConfig:
    """Load a pipeline config from YAML, or the built-in default when no path is given."""
    if path is None:
        return PipelineConfig()
    data = read_yaml_mapping(path, "pipeline config", "pass an existing YAML file", "a mapping of stages")
    return parse_config(data, source=str(path))
