"""Embedder precision: part of the index identity, resolved per CPU for `auto`, never mixed in one index."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sluice.config import EmbedderConfig, PipelineConfig, parse_config
from sluice.errors import ConfigError, EmbedderMismatchError
from sluice.hardware import cpu_flags, native_bf16, resolve_precision
from tasks.chunk import make_chunker
from tasks.embed import Embedder, EmbedderIdentity
from tasks.embed_onnx import RECIPE
from tasks.ingest_text import text_document
from tasks.store import check_embedder, register_index

# The default config's ids before the precision could be anything but float32: stored indexes keep them.
DEFAULT_INDEX_ID, DEFAULT_CONFIG_ID = "ae14453c20229500", "cd4353d85cab3547"
AVX2_ONLY = frozenset({"avx", "avx2", "fma"})
WITH_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}


def test_float32_configs_keep_their_ids():
    explicit = parse_config({"embedder": {"precision": "float32"}})
    assert (explicit.index_id, explicit.config_id) == (DEFAULT_INDEX_ID, DEFAULT_CONFIG_ID)


def test_the_default_is_auto_resolved_for_this_cpu():
    expected = "bfloat16" if native_bf16() else "float32"
    assert PipelineConfig().embedder.precision == expected
    assert parse_config({}).index_id == parse_config({"embedder": {"precision": expected}}).index_id
    # Where the CPU lacks bf16 the default stays the float32 space every earlier index was built in.
    assert (PipelineConfig().index_id == DEFAULT_INDEX_ID) == (expected == "float32")


def test_auto_under_onnx_is_float32_not_a_refusal():
    assert parse_config({"embedder": {"backend": "onnx"}}).embedder.precision == "float32"
    assert parse_config({"embedder": {"backend": "onnx", "precision": "auto"}}).embedder.precision == "float32"


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_another_precision_is_another_index(precision):
    config = parse_config({"embedder": {"precision": precision}})
    assert config.index_id != DEFAULT_INDEX_ID
    assert config.index_body()["embedder"]["precision"] == precision


def test_auto_resolves_per_cpu_and_logs_the_fallback(caplog):
    with caplog.at_level(logging.INFO, logger="sluice.hardware"):
        assert resolve_precision("auto", AVX2_ONLY) == "float32"
    assert "lacks avx512_bf16" in caplog.text
    assert resolve_precision("auto", WITH_BF16) == "bfloat16"
    assert resolve_precision("int8", AVX2_ONLY) == "int8"
    # A config never stores `auto`: it is what this machine resolves it to.
    stored = parse_config({"embedder": {"precision": "auto"}}).index_body()["embedder"]["precision"]
    assert stored == ("bfloat16" if native_bf16() else "float32")


def test_cpu_flags_read_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert native_bf16(cpu_flags(str(info)))
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_cache_keys_differ_by_precision_and_float32_keeps_its_key():
    fp32 = EmbedderIdentity("m", "a" * 64, 384, True)
    bf16 = EmbedderIdentity("m", "a" * 64, 384, True, "bfloat16")
    assert fp32.key == "m@" + "a" * 16 + ":384:n"
    assert bf16.key != fp32.key


def test_precision_changes_vectors_but_keeps_them_close():
    texts = ["How is the virus transmitted between people?", "Incubation lasts five days on average."]
    vectors = {p: Embedder(EmbedderConfig(precision=p)).encode(texts) for p in ("float32", "bfloat16", "int8")}
    for p in ("bfloat16", "int8"):
        assert not np.array_equal(vectors[p], vectors["float32"]), f"{p} encoded like float32"
        assert np.allclose(np.linalg.norm(vectors[p], axis=1), 1.0, atol=1e-5)
    cosine = np.sum(vectors["bfloat16"] * vectors["float32"], axis=1)
    assert cosine.min() >= 0.999, cosine


def test_an_index_refuses_an_embedder_of_another_precision(db, new_tenant):
    tenant = new_tenant("prec")
    identity = EmbedderIdentity("synthetic-precision", "c" * 64, 384, True)
    config = PipelineConfig(embedder=EmbedderConfig(model="synthetic-precision", precision="float32"))
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity)
        check_embedder(conn, config.index_id, identity)  # the recorded embedder is accepted
        with pytest.raises(EmbedderMismatchError, match="bfloat16"):
            check_embedder(
                conn, config.index_id, EmbedderIdentity("synthetic-precision", "c" * 64, 384, True, "bfloat16")
            )
    bf16 = config.model_copy(update={"embedder": config.embedder.model_copy(update={"precision": "bfloat16"})})
    assert bf16.index_id != config.index_id
    with db.tenant(tenant) as conn:
        with pytest.raises(EmbedderMismatchError):  # an fp32 embedder cannot write into the bf16 index
            register_index(conn, bf16, identity)


# --- backend onnx: ONNX Runtime on a graph exported locally from the packaged weights ---------------------------


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def test_onnx_backend_is_another_index_and_torch_keeps_its_ids():
    onnx = parse_config({"embedder": {"backend": "onnx"}})
    assert onnx.index_id != DEFAULT_INDEX_ID
    assert onnx.index_body()["embedder"]["backend"] == "onnx"
    assert "backend" not in PipelineConfig().index_body()["embedder"]  # torch is left out: old ids stand
    assert parse_config({"embedder": {"backend": "torch", "precision": "float32"}}).index_id == DEFAULT_INDEX_ID
    int8 = parse_config({"embedder": {"backend": "onnx", "precision": "int8"}})
    assert len({onnx.index_id, int8.index_id, parse_config({"embedder": {"precision": "int8"}}).index_id}) == 3


def test_onnx_backend_refuses_a_precision_it_does_not_run():
    with pytest.raises(ConfigError, match="backend 'onnx' runs precision float32 or int8, not 'bfloat16'"):
        parse_config({"embedder": {"backend": "onnx", "precision": "bfloat16"}})


def test_onnx_cache_keys_name_the_backend():
    torch_key = EmbedderIdentity("m", "a" * 64, 384, True).key
    onnx = EmbedderIdentity("m", "a" * 64, 384, True, "float32", "onnx")
    assert onnx.key == torch_key + ":onnx" and onnx.label == "float32 on onnx"


def test_onnx_float32_matches_torch_and_is_exported_once(onnx_cache):
    texts = [c.text for c in _sample_chunks()] + ["word " * 600]  # the last is past the 256-token window
    reference = Embedder(EmbedderConfig()).encode(texts)
    embedder = Embedder(EmbedderConfig(backend="onnx"), cache_dir=onnx_cache)
    vectors = embedder.encode(texts)
    cosine = np.sum(vectors * reference, axis=1)
    assert cosine.min() >= 0.999, cosine  # the adoption bar (issue 18), over real chunks
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cached = list((onnx_cache / "onnx").glob("*.onnx"))
    assert [p.name for p in cached] == [f"{embedder.identity.weights_hash[:16]}-float32-v{RECIPE}.onnx"]
    before = cached[0].stat().st_mtime_ns
    again = Embedder(EmbedderConfig(backend="onnx"), cache_dir=onnx_cache).encode(texts[:3])
    assert cached[0].stat().st_mtime_ns == before  # reused, not exported again
    assert np.array_equal(again, embedder.encode(texts[:3]))


def test_onnx_int8_is_quantised_and_recorded(onnx_cache):
    texts = [c.text for c in _sample_chunks()[:8]]
    embedder = Embedder(EmbedderConfig(backend="onnx", precision="int8"), cache_dir=onnx_cache)
    vectors = embedder.encode(texts)
    reference = Embedder(EmbedderConfig(backend="onnx"), cache_dir=onnx_cache).encode(texts)
    cosine = np.sum(vectors * reference, axis=1)
    assert not np.array_equal(vectors, reference) and cosine.min() > 0.95, cosine
    assert (embedder.identity.precision, embedder.identity.backend) == ("int8", "onnx")


def test_an_index_refuses_an_embedder_of_another_backend(db, new_tenant):
    tenant = new_tenant("backend")
    identity = EmbedderIdentity("synthetic-backend", "d" * 64, 384, True)
    config = PipelineConfig(embedder=EmbedderConfig(model="synthetic-backend", precision="float32"))
    onnx = EmbedderIdentity("synthetic-backend", "d" * 64, 384, True, "float32", "onnx")
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity)
        with pytest.raises(EmbedderMismatchError, match="float32 on onnx"):
            check_embedder(conn, config.index_id, onnx)
    on_onnx = config.model_copy(update={"embedder": config.embedder.model_copy(update={"backend": "onnx"})})
    with db.tenant(tenant) as conn:
        register_index(conn, on_onnx, onnx)  # its own index: accepted
        with pytest.raises(EmbedderMismatchError):  # a torch embedder cannot write into the onnx index
            register_index(conn, on_onnx, identity)


def _sample_chunks():
    """Chunks of the shipped sample's Markdown files, read as text (no parser: the test stays offline and quick)."""
    chunker = make_chunker(PipelineConfig().chunker)
    folder = Path(__file__).resolve().parent.parent / "data/sample/corpus"
    return [c for p in sorted(folder.glob("*.md")) for c in chunker.split(text_document(p.name, p.read_text()))]
