"""Bounded parsing: a bomb, an endless parse or a crashed parser costs one document, never the ingest.

Real files built here (a PDF whose font inflates to 1 GiB, a zip bomb, a long text), real parse
processes (tasks.parse_process), real Postgres for the ingest-level tests.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sluice.config import ParserConfig
from sluice.errors import DocumentError
from tasks.ingest import ingest_source
from tasks.parse import parse_file
from tasks.parse_child import answer
from tasks.parse_limits import ParseLimits
from tasks.parse_process import ParsePool, parse_pool
from tests.reliability.pdfbomb import font_bomb, text_pdf
from tests.reliability.zipbomb import bomb

SAMPLE_DOCX = Path(__file__).resolve().parent.parent / "data" / "sample" / "corpus" / "brake-maintenance.docx"
DEFAULTS = ParseLimits.default()
MIB = 1024 * 1024
HIVE = "Bees fan their wings to cool the hive."


def slow_text() -> bytes:
    """40,000 short paragraphs (2.5 MB): tens of seconds of unstructured's text partitioning."""
    return "\n\n".join(
        f"Paragraph {n}: the hive on hill {n % 97} swarmed in {1900 + n % 120}." for n in range(40_000)
    ).encode()


class PeakRss:
    """Samples this process's resident memory every 10 ms; `growth` is the peak above the first sample."""

    def __init__(self):
        self.first = self.peak = _rss(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss(os.getpid()))

    @property
    def growth(self) -> int:
        return self.peak - self.first

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture()
def pools(settings):
    """Make private parse pools with some limits changed; every child is stopped afterwards.

    (`settings`: loading them switches telemetry off in this process and so in its children, as every entry
    point does.)
    """
    made: list[ParsePool] = []

    def make(**changes: object) -> ParsePool:
        made.append(ParsePool(dataclasses.replace(DEFAULTS, **changes)))
        return made[-1]

    yield make
    for pool in made:
        pool.close()


@pytest.fixture()
def shared_pool(settings) -> ParsePool:
    """This process's pool for the default limits, the one ingestion uses (a child start costs 10-90 s here)."""
    return parse_pool()


def _parse(pool: ParsePool, path: Path):
    return pool.parse(path, path.name, ParserConfig(), path.read_bytes())


def test_parse_process_gives_the_documents_parsing_in_process_gives(shared_pool, sample_corpus):
    pool = shared_pool
    files = sorted(sample_corpus.iterdir())
    assert {p.suffix for p in files} >= {".pdf", ".docx", ".html", ".md"}
    for path in files:
        assert _parse(pool, path) == parse_file(path, path.name, ParserConfig()), path.name
    assert pool.pids() and os.getpid() not in pool.pids()


def test_pdf_stream_bomb_fails_alone_and_the_ingest_process_stays_small(db, new_tenant, pipeline, embedder, tmp_path):
    tenant = new_tenant("bomb")
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "warm.pdf").write_bytes(font_bomb(1, "Drones do not sting."))  # parse process up, PDF stack loaded
    assert ingest_source(db, tenant, pipeline, embedder, warm, 50 * MIB).ingested == 1
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.pdf").write_bytes(font_bomb(1024))  # 1 GiB of font in a ~1 MB file
    (src / "hive.pdf").write_bytes(font_bomb(1, HIVE))
    (src / "notes.md").write_text("# Notes\n\nWorker bees live about six weeks in summer.\n")
    assert (src / "bomb.pdf").stat().st_size < 2 * MIB
    with PeakRss() as rss:
        summary = ingest_source(db, tenant, pipeline, embedder, src, 50 * MIB)
    assert (summary.ingested, summary.failed) == (2, 1), summary.as_dict()
    with db.tenant(tenant) as conn:
        errors = conn.execute("SELECT source_id, stage, reason FROM ingest_errors WHERE run_id = %s", (summary.run_id,))
        (source, stage, reason), *more = errors.fetchall()
        texts = [r[0] for r in conn.execute("SELECT text FROM documents ORDER BY source_id")]
    assert not more and (source, stage) == ("bomb.pdf", "parse")
    assert "SLUICE_MAX_UNZIPPED_BYTES" in reason and str(DEFAULTS.max_unzipped_bytes) in reason, reason
    assert any(HIVE in t for t in texts), texts
    assert rss.growth < 256 * MIB, f"the ingesting process grew by {rss.growth / MIB:.0f} MiB"


def test_memory_limit_stops_a_bomb_the_precheck_lets_through(pools, tmp_path):
    pool = pools(max_unzipped_bytes=1 << 40, memory_bytes=1 << 30)
    hive, boom = tmp_path / "hive.pdf", tmp_path / "bomb.pdf"
    hive.write_bytes(font_bomb(1, HIVE))
    boom.write_bytes(font_bomb(1024))
    assert HIVE in _parse(pool, hive).text
    [first] = pool.pids()
    with PeakRss() as rss, pytest.raises(DocumentError) as caught:
        _parse(pool, boom)
    assert caught.value.stage == "parse" and "SLUICE_PARSE_MEMORY_BYTES" in caught.value.reason
    assert str(1 << 30) in caught.value.reason, caught.value.reason
    assert not _alive(first) and rss.growth < 64 * MIB  # the memory went with the child, never through here
    assert HIVE in _parse(pool, hive).text and pool.pids() != [first]


def test_parse_past_the_time_limit_is_killed_and_recorded(db, new_tenant, pipeline, embedder, tmp_path):
    limits = dataclasses.replace(DEFAULTS, timeout_s=2.0)
    tenant = new_tenant("slow")
    (tmp_path / "a-slow.txt").write_bytes(slow_text())
    (tmp_path / "b-ok.md").write_text("# Ok\n\nA queen lays up to two thousand eggs a day.\n")
    pool = parse_pool(limits)
    try:
        _parse(pool, tmp_path / "b-ok.md")
        [first] = pool.pids()
        summary = ingest_source(db, tenant, pipeline, embedder, tmp_path, 50 * MIB, parse_limits=limits)
        assert not _alive(first) and len(pool.pids()) == 1  # killed; a fresh child parsed b-ok.md
    finally:
        pool.close()
    assert (summary.ingested, summary.failed) == (1, 1), summary.as_dict()
    with db.tenant(tenant) as conn:
        row = conn.execute("SELECT source_id, stage, reason FROM ingest_errors WHERE run_id = %s", (summary.run_id,))
        source, stage, reason = row.fetchone()
    assert (source, stage) == ("a-slow.txt", "parse")
    assert "SLUICE_PARSE_TIMEOUT_S" in reason and "2 s" in reason, reason


def test_crashed_parser_is_replaced_and_the_next_document_parses(shared_pool, tmp_path):
    pool = shared_pool
    slow, ok = tmp_path / "slow.txt", tmp_path / "ok.md"
    slow.write_bytes(slow_text())
    ok.write_text("# Ok\n\nDrones have no sting.\n")
    _parse(pool, ok)
    child = pool.pids()[-1]  # the one the next parse takes
    idle_cpu, failures = _cpu_ticks(child), []

    def parse_slow() -> None:
        try:
            _parse(pool, slow)
        except DocumentError as err:
            failures.append(err)

    parsing = threading.Thread(target=parse_slow)
    parsing.start()
    deadline = time.monotonic() + 120
    while _cpu_ticks(child) < idle_cpu + 30 and time.monotonic() < deadline:  # 0.3 s of CPU into the document
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)  # as the kernel's OOM killer would
    parsing.join(timeout=60)
    assert len(failures) == 1, "the parse of the slow document did not fail"
    reason = failures[0].reason
    assert "died (killed by SIGKILL)" in reason and "restarted" in reason, reason
    assert "Drones have no sting." in _parse(pool, ok).text and child not in pool.pids()


def test_zip_bomb_is_still_refused_in_the_parse_process(shared_pool, tmp_path):
    path = tmp_path / "bomb.docx"
    path.write_bytes(bomb(SAMPLE_DOCX.read_bytes(), "word/media/bomb.xml", 1024))
    with pytest.raises(DocumentError, match="SLUICE_MAX_UNZIPPED_BYTES"):
        _parse(shared_pool, path)


def _slides(n: int) -> bytes:
    from pptx import Presentation

    deck = Presentation()
    for i in range(n):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide {i + 1}: hive inspection"
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "limit", "setting"),
    [
        ("three.pdf", lambda: text_pdf(["Bees.", "Wasps.", "Ants."]), {"max_pages": 2}, "SLUICE_MAX_PAGES"),
        ("three.pptx", lambda: _slides(3), {"max_pages": 2}, "SLUICE_MAX_PAGES"),
        (
            "ten.md",
            lambda: "\n\n".join(f"Paragraph {n} on bees." for n in range(10)).encode(),
            {"max_elements": 9},
            "SLUICE_MAX_ELEMENTS",
        ),
    ],
)
def test_pages_and_elements_limits_name_their_setting(settings, tmp_path, name, content, limit, setting):
    path = tmp_path / name
    path.write_bytes(content())
    at_limit = {k: v + 1 for k, v in limit.items()}
    assert parse_file(path, name, ParserConfig(), limits=dataclasses.replace(DEFAULTS, **at_limit)).text
    with pytest.raises(DocumentError, match=setting) as caught:
        parse_file(path, name, ParserConfig(), limits=dataclasses.replace(DEFAULTS, **limit))
    assert str(next(iter(limit.values()))) in caught.value.reason


def test_a_parsed_document_larger_than_the_decompressed_limit_is_not_sent_back(settings, tmp_path):
    path = tmp_path / "long.md"
    path.write_text("# Long\n\n" + "Bees dance. " * 20_000)
    header = {"path": str(path), "source_id": path.name, "parser": ParserConfig().model_dump(mode="json")}
    limits = dataclasses.replace(DEFAULTS, max_unzipped_bytes=100_000, memory_bytes=1 << 40)
    reply, spent = answer(header, path.read_bytes(), limits)  # the parse process's handler, run here
    reason = json.loads(reply)["error"]["reason"]
    assert not spent and "SLUICE_MAX_UNZIPPED_BYTES" in reason and "100000" in reason, reason


def test_a_worker_with_a_warm_parser_has_its_imports_done_before_its_first_document(db, settings, sample_corpus):
    """SLUICE_WORKER_WARM_PARSER: the worker's warm-up starts the parse child its ingest tasks use, and waits for it."""
    import torch

    from serving.worker import WorkerState

    threads = torch.get_num_threads()
    state = WorkerState(settings.model_copy(update={"worker_warm_parser": True}))
    try:
        state.warm_up()
        pool = parse_pool(ParseLimits.from_settings(settings))
        warm = pool.pids()
        assert len(warm) == 1 and all(child.ready for child in pool._idle), "no imported parse child after warm-up"
        pool.warm()  # an idle, imported child is enough: no second one
        assert pool.pids() == warm
        path = next(p for p in sorted(sample_corpus.iterdir()) if p.suffix == ".md")
        assert _parse(pool, path).text and pool.pids() == warm, "the first document did not go to the warm child"
    finally:
        state.close()
        torch.set_num_threads(threads)
