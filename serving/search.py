"""The worker's side of a search: a query message with `search` options retrieves chunks and answers nothing.

It rides the `sluice.query` task (same queue, retries, dead letters and traces as an answer): the API
sends `{"search": {"k": …, "mode": …}, …}` and the worker returns the chunks with their text.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from serving.config_source import served_config
from serving.schemas import SearchOptions
from sluice import logs, metrics
from sluice.errors import QueryError


def search_options(payload: dict) -> SearchOptions:
    """The message's search options, checked with the API's own model."""
    try:
        return SearchOptions.model_validate(payload["search"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "search"
        raise QueryError(f"search refused: {first['msg']} (at {where})") from None


def run_search(state: Any, payload: dict) -> dict:
    """The served index's top chunks for one tenant's question (k and mode as asked, else the config's).

    `state` is the worker process's `serving.worker.WorkerState` (not imported: the worker imports this).
    """
    from tasks.answer import reranker_key, search_chunks

    t0 = time.perf_counter()
    options = search_options(payload)
    tenant = payload["tenant"]
    served = served_config(state.settings, state.db, tenant, payload.get("collection"))
    config = served.config
    logs.bind(config_id=config.config_id)
    overrides = options.model_dump(exclude_none=True)
    retrieval = config.retrieval.model_copy(update=overrides) if overrides else None
    found = search_chunks(
        state.db,
        tenant,
        config,
        state.embedder(config),
        payload["question"],
        filters=payload.get("filters"),
        collection=payload.get("collection"),
        retrieval=retrieval,
    )
    for stage in ("embed", "retrieve"):
        metrics.STAGE.labels(stage).observe(found.timings_ms[stage] / 1000)
    timings = {k: round(v, 3) for k, v in found.timings_ms.items()}
    timings["worker_total"] = round((time.perf_counter() - t0) * 1000, 3)
    return {
        "chunks": [chunk_json(h) for h in found.hits],
        "config_id": config.config_id,
        "index_id": found.index_id,
        "mode": (retrieval or config.retrieval).mode,
        "reranker": reranker_key(config),  # then each chunk's score is the rerank model's
        "corpus_version": served.version,
        "timings_ms": timings,
    }


def chunk_json(hit) -> dict:
    """The wire form of a retrieved chunk: the span an answer would cite, and the text around it."""
    return {
        "document": hit.source_id,
        "document_id": hit.document_id,
        "span": list(hit.citation),
        "text_span": [hit.start, hit.end],
        "score": hit.score,
        "text": hit.text,
        "metadata": hit.doc_metadata,
    }
