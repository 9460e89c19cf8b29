"""llama-cpp-python's OpenAI-compatible server, with token usage in streamed chat completions.

Run as `python -m tasks.llm.llamacpp_server` with llama_cpp.server's own arguments (`--model FILE
--model_alias NAME --host --port --n_ctx --chat_format ...`); `tasks/llm/local.py` starts it.

It also registers the chat format `gemma3`. The packaged Gemma 3 270M GGUF carries no chat template, and
without one llama-cpp-python formats messages as Llama 2 (`[INST] ... [/INST]`): Gemma then answered a
user-only message with 0 tokens and a system + user one with unrelated text. llama-cpp-python's own
`gemma` format drops the system message; `gemma3` follows Gemma 3's published template instead.

Why not `python -m llama_cpp.server` as is: llama-cpp-python 0.3.36 ignores `stream_options.include_usage`,
so a streamed answer would carry no token counts and its cost could only be estimated. Here the
completion generator's own `prompt_tokens` and `completion_tokens` (the numbers its non-streamed
`usage` reports) are read when it finishes, and a last chunk `{"choices": [], "usage": {...}}` is sent
before `[DONE]`, as OpenAI does. Nothing else of the server changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

GEMMA_TURN_END = "<end_of_turn>"


def gemma3_prompt(messages: list[dict[str, Any]]) -> str:
    """Messages as Gemma 3's chat template renders them (tokenizer_config.json of google/gemma-3-*-it), minus
    the BOS token, which the tokenizer adds: a leading system message opens the first turn, followed by a
    blank line; `assistant` turns are `model` turns; contents are trimmed; the model's turn is opened last."""
    prefix = ""
    if messages and messages[0]["role"] == "system":
        prefix, messages = f"{messages[0]['content']}\n\n", messages[1:]
    turns = []
    for i, message in enumerate(messages):
        role = "model" if message["role"] == "assistant" else message["role"]
        content = (prefix if i == 0 else "") + (message.get("content") or "").strip()
        turns.append(f"<start_of_turn>{role}\n{content}{GEMMA_TURN_END}\n")
    return "".join(turns) + "<start_of_turn>model\n"


def register_gemma3() -> None:
    """Make `--chat_format gemma3` known to llama-cpp-python (in the server process)."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

    @register_chat_format("gemma3")
    def _format_gemma3(messages: list[dict[str, Any]], **_: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt=gemma3_prompt(messages), stop=GEMMA_TURN_END)


def _usage_of(generator: Any) -> dict[str, int] | None:
    """Token counts from a suspended `Llama._create_completion` generator's locals (None if not there)."""
    frame = getattr(generator, "gi_frame", None)
    local = frame.f_locals if frame is not None else {}
    prompt, completion = local.get("prompt_tokens"), local.get("completion_tokens")
    if prompt is None or completion is None:
        return None
    return {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(completion),
        "total_tokens": len(prompt) + len(completion),
    }


def install_stream_usage(llama_cls: Any) -> None:
    """Patch `llama_cls` so a streamed chat completion ends with a usage chunk."""
    create_completion = llama_cls._create_completion
    create_chat = llama_cls.create_chat_completion

    def _create_completion(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = create_completion(self, *args, **kwargs)
        try:
            for chunk in inner:
                if chunk["choices"] and chunk["choices"][0].get("finish_reason") is not None:
                    self._sluice_usage = _usage_of(inner) or chunk.get("usage")
                yield chunk
        finally:
            inner.close()  # a client that went away ends generation here

    def create_chat_completion(self, *args: Any, **kwargs: Any) -> Any:
        self._sluice_usage = None
        result = create_chat(self, *args, **kwargs)
        return _with_usage(self, result) if kwargs.get("stream") else result

    llama_cls._create_completion = _create_completion
    llama_cls.create_chat_completion = create_chat_completion


def _with_usage(llama: Any, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    last: dict[str, Any] | None = None
    try:
        for chunk in chunks:
            last = chunk
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    usage = getattr(llama, "_sluice_usage", None)
    if last is not None and usage:
        yield {
            "id": last["id"],
            "object": "chat.completion.chunk",
            "created": last["created"],
            "model": last["model"],
            "choices": [],
            "usage": usage,
        }


def main() -> None:
    """Patch llama_cpp.Llama, then run llama_cpp.server's own command line."""
    import llama_cpp
    from llama_cpp.server.__main__ import main as server_main

    install_stream_usage(llama_cpp.Llama)
    register_gemma3()
    server_main()


if __name__ == "__main__":
    main()
