"""Document metadata users give: gathered from every source, merged, validated (docs/retrieval.md).

Sources, lowest precedence first (a later one wins key by key, top-level keys only):
1. the run's `metadata` (Prefect flow parameter, `sluice ingest --metadata`, an API job naming a source),
2. the folder's manifest `_metadata.json`: {"file name": {...}, ...} for the files of that folder
   (API uploads' per-file `metadata` fields are written as this manifest),
3. a sidecar `NAME.meta.json` next to the file (`report.pdf` -> `report.pdf.meta.json`),
4. YAML front matter at the top of a Markdown file (`---` ... `---`), removed from the indexed text.

Manifests and sidecars are metadata, never documents: listings skip them. The merged metadata must
be a JSON object of at most MAX_BYTES bytes as JSON text, nested at most MAX_DEPTH levels, holding
strings, numbers, booleans, null, lists and objects; keys Sluice sets itself (RESERVED) are refused,
and a promoted key (SLUICE_FILTER_COLUMNS) must hold its declared type. A document whose metadata is
refused fails with a message naming the file, the source and the key; the run goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sluice.confine import read_inside
from sluice.errors import DocumentError
from sluice.filter_columns import MAX_INTEGER, MAX_TEXT_BYTES, RESERVED
from sluice.jsonwalk import text_problem, walk

MANIFEST = "_metadata.json"
SIDECAR = ".meta.json"
MAX_BYTES = 16 * 1024  # the merged metadata as JSON text
MAX_DEPTH = 4  # the object itself is level 1: {"a": {"b": [1]}} is 3 levels
MAX_KEY = 128
MAX_FILE_BYTES = 4 * 1024 * 1024  # a manifest or sidecar
MAX_FRONT_MATTER = 64 * 1024
MARKDOWN = frozenset({".md", ".markdown"})


class MetadataError(ValueError):
    """Metadata that cannot be stored; the message names the key and the fix."""


def is_metadata_file(path: Path) -> bool:
    """Whether a listed file is a manifest or a sidecar (metadata, not a document)."""
    return path.name == MANIFEST or path.name.endswith(SIDECAR)


def check_object(value: Any) -> dict[str, Any]:
    """Return `value` if it is storable metadata (an object within the limits), else raise MetadataError."""
    if not isinstance(value, dict):
        raise MetadataError(f"metadata must be a JSON object of key: value, got {type(value).__name__}")
    size = 2
    for depth, key, item in walk(value):
        if depth > MAX_DEPTH:
            raise MetadataError(f"key {key!r} is nested deeper than {MAX_DEPTH} levels: flatten it")
        _check_item(key, item)
        size += len(json.dumps(item, ensure_ascii=False)) if not isinstance(item, (dict, list)) else 2
        size += len(str(key)) + 4 if key is not None else 1
        if size > MAX_BYTES:
            raise MetadataError(f"metadata is over {MAX_BYTES} bytes as JSON (at key {key!r}): keep it smaller")
    for key in value:
        if key in RESERVED:
            raise MetadataError(f"key {key!r} is set by Sluice itself: rename it (reserved: {sorted(RESERVED)})")
    return value


def _check_item(key: Any, item: Any) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or text_problem(key)):
        raise MetadataError(f"key {key!r} must be a non-empty string of at most {MAX_KEY} characters")
    if isinstance(item, float) and not math.isfinite(item):
        raise MetadataError(f"key {key!r}: numbers must be finite (no NaN or Infinity)")
    if isinstance(item, str) and (problem := text_problem(item)):
        raise MetadataError(f"key {key!r}: {problem}")
    if item is not None and not isinstance(item, (str, int, float, bool, list, dict)):
        raise MetadataError(f"key {key!r} holds a {type(item).__name__}: use a string, number, boolean, list or object")


def _fits(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_INTEGER
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str) and len(value.encode()) <= MAX_TEXT_BYTES


def check_promoted(meta: dict[str, Any], promoted: dict[str, str]) -> None:
    """Raise MetadataError naming a promoted key whose value is not of its declared type (null is allowed)."""
    for key, kind in sorted(promoted.items()):
        if meta.get(key) is not None and not _fits(kind, meta[key]):
            limit = f" of at most {MAX_TEXT_BYTES} bytes" if kind == "text" else ""
            raise MetadataError(
                f"key {key!r} is promoted as {kind}{limit} (SLUICE_FILTER_COLUMNS), got {str(meta[key])[:40]!r} "
                f"({type(meta[key]).__name__}): give it a value of that type"
            )


def split_front_matter(text: str) -> tuple[str | None, str]:
    """(the YAML between a leading `---` line and the next `---`/`...` line, the rest); (None, text) without one."""
    body = text.removeprefix("\ufeff")
    if not body.startswith("---") or body[3:4] not in ("\n", "\r"):
        return None, text
    lines = body.splitlines(keepends=True)
    for i, line in enumerate(lines[1:], start=1):
        if line.rstrip("\r\n") in ("---", "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    return None, text


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a Markdown text as JSON-ready values ({} without one); MetadataError if invalid."""
    raw, _ = split_front_matter(text)
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode()) > MAX_FRONT_MATTER:
        raise MetadataError(f"front matter is over {MAX_FRONT_MATTER} bytes: keep it smaller")
    import yaml

    try:
        value = yaml.load(raw, Loader=_no_aliases_loader())  # noqa: S506 (a SafeLoader without aliases)
        return _json_ready(value) if value is not None else {}
    except yaml.YAMLError as exc:
        raise MetadataError(f"front matter is not valid YAML: {' '.join(str(exc).split())[:200]}: fix it") from None
    except RecursionError:
        raise MetadataError(f"front matter is nested deeper than {MAX_DEPTH} levels: flatten it") from None
    except ValueError as exc:  # YAML's converters: a date like 2020-02-30, an integer over 4300 digits
        raise MetadataError(f"front matter holds a value YAML cannot convert ({exc}): quote it as a string") from None


def _json_ready(value: Any) -> Any:
    """YAML dates as ISO strings (JSON has no date type); everything else as loaded."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}  # depth is bounded by the size of the text
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


@lru_cache(maxsize=1)
def _no_aliases_loader():
    import yaml

    class NoAliases(yaml.SafeLoader):
        """SafeLoader refusing aliases: `*a` repeated can stand for exponentially much data."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases (*name) are not allowed in front matter")
            return super().compose_node(parent, index)

    return NoAliases


def _read_json(path: Path, confine_to: Path | None) -> Any:
    """A manifest or sidecar as JSON; MetadataError naming it when it cannot be read or parsed."""
    try:
        if confine_to is not None:
            data = read_inside(path, path.name, confine_to, MAX_FILE_BYTES)
        elif path.stat().st_size > MAX_FILE_BYTES:
            raise MetadataError(f"{path.name} is over {MAX_FILE_BYTES} bytes: split it")
        else:
            data = path.read_bytes()
        return json.loads(data)
    except DocumentError as exc:
        raise MetadataError(f"{path.name}: {exc.reason}") from None
    except OSError as exc:
        raise MetadataError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"{path.name} is not valid JSON ({exc}): fix it") from None


# Two: a listing is sorted, so a run reads one folder's files together (a window may straddle two). Each
# entry is a parsed manifest of up to 4 MiB of JSON (~30 MiB of objects) kept by a long-lived worker:
# 64 of them, one per upload job, held the better part of a gigabyte.
@lru_cache(maxsize=2)
def _manifest(path: Path, stamp: tuple[int, int], confine_to: Path | None) -> Any:
    """A folder's manifest, read once per version of it (`stamp`: mtime and size), not once per file."""
    value = _read_json(path, confine_to)
    if not isinstance(value, dict):
        raise MetadataError(f"{path.name} must map file names to metadata objects, got {type(value).__name__}")
    return value


def _from_manifest(path: Path, confine_to: Path | None) -> Any:
    manifest = path.parent / MANIFEST
    try:
        st = manifest.stat()
    except FileNotFoundError:
        return {}
    return _manifest(manifest, (st.st_mtime_ns, st.st_size), confine_to).get(path.name, {})


def _from_sidecar(path: Path, confine_to: Path | None) -> Any:
    sidecar = path.with_name(path.name + SIDECAR)
    return _read_json(sidecar, confine_to) if sidecar.exists() else {}


def _from_front_matter(path: Path, data: bytes) -> Any:
    if path.suffix.lower() not in MARKDOWN or not data.lstrip(b"\xef\xbb\xbf").startswith(b"---"):
        return {}
    return front_matter(data.decode("utf-8", errors="replace"))


def gather(
    path: Path,
    source_id: str,
    data: bytes,
    run_metadata: dict[str, Any] | None,
    promoted: dict[str, str],
    confine_to: Path | None = None,
) -> dict[str, Any]:
    """The user metadata of one file, merged from every source; DocumentError naming the file, source and key."""
    merged: dict[str, Any] = {}
    sources = (
        ("the run's metadata", lambda: run_metadata or {}),
        (f"{MANIFEST} of its folder", lambda: _from_manifest(path, confine_to)),
        (f"sidecar {path.name}{SIDECAR}", lambda: _from_sidecar(path, confine_to)),
        ("front matter", lambda: _from_front_matter(path, data)),
    )
    for where, read in sources:
        try:
            merged.update(check_object(read()))
        except MetadataError as exc:
            raise DocumentError(source_id, "metadata", f"{where}: {exc}") from None
    try:
        check_promoted(check_object(merged), promoted)
    except MetadataError as exc:
        raise DocumentError(source_id, "metadata", str(exc)) from None
    return merged


def store_user_metadata(conn: psycopg.Connection, source_id: str, meta: dict[str, Any]) -> bool:
    """Make `meta` the document's user metadata (in `metadata` too, replacing the previous user keys); True if changed.

    A change without new chunks still changes what filters match: the tenant's cached answers go with it.
    """
    changed = conn.execute(
        "UPDATE documents SET metadata = (metadata - ARRAY(SELECT jsonb_object_keys(user_metadata))) || %(m)s, "
        "user_metadata = %(m)s, updated_at = now() WHERE source_id = %(s)s AND user_metadata IS DISTINCT FROM %(m)s",
        {"m": Jsonb(meta), "s": source_id},
    ).rowcount
    if changed:
        conn.execute("SELECT bump_corpus()")
    return bool(changed)
