"""parent_child answers from parents: retrieval ranks the small child chunks, the answerer reads their sections.

Children of one parent section collapse into one context at the rank (and score) of the best of them, so
a section is never handed to the generator twice. The context keeps the best child's span as what an
answer built from it cites (`Hit.cite`, inside the section) and every matching child's span in
`metadata["children"]`. Hits of other chunkers pass through unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import psycopg

from tasks.retrieve import Hit
from tasks.store import parent_sections


def with_parents(conn: psycopg.Connection, hits: list[Hit]) -> list[Hit]:
    """Replace parent_child hits by their parent sections, de-duplicated, in rank order."""
    children = [h.chunk_id for h in hits if "parent_start" in h.metadata]
    if not children:
        return hits  # no round trip for the other chunkers
    sections = parent_sections(conn, children)
    out: list[Hit] = []
    by_parent: dict[tuple[int, int], Hit] = {}
    for hit in hits:
        text = sections.get(hit.chunk_id)
        if text is None:
            out.append(hit)
            continue
        start, end = hit.metadata["parent_start"], hit.metadata["parent_end"]
        if (hit.document_id, start) in by_parent:
            by_parent[(hit.document_id, start)].metadata["children"].append([hit.start, hit.end])
            continue
        children = {**hit.metadata, "children": [[hit.start, hit.end]]}
        parent = replace(hit, text=text, start=start, end=end, cite=(hit.start, hit.end), metadata=children)
        by_parent[(hit.document_id, start)] = parent
        out.append(parent)
    return out
