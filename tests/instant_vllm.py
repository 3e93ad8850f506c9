"""An instant upstream that takes vLLM's command line: for tests where vLLM itself is not
what is being tested (money, fairness, scaling, several servers), and for benchmarks.

The local provider launches it exactly as it launches vLLM (`AUXEN_VLLM_COMMAND`, see
`tests.servers.instant_env`): `--model`/positional model, `--host`, `--port`,
`--served-model-name`, `--max-model-len`, the key in `VLLM_API_KEY` or `--api-key`; any
other vLLM flag is accepted and ignored. It generates the way vLLM bounds generation, so
money tests can count what an upstream would really produce:

- each choice gets `max_completion_tokens`, else `max_tokens`, else what is left of the
  context (`--max-model-len` minus the prompt), all of them (as with `ignore_eos`);
  asking for more than the context holds is vLLM's 400;
- `n` choices (and `best_of`, which vLLM generates and bills, when larger), for each
  prompt of a completions batch (a list of strings or of token-id lists);
- one token is one word `x`; a prompt's tokens are its whitespace-separated words;
- streams send one SSE event per token per choice, then the usage chunk when
  `stream_options.include_usage` is set, then `[DONE]`.

Environment knobs (all optional): `INSTANT_VLLM_STARTUP_DELAY_S` (seconds before it
listens, like a model loading), `INSTANT_VLLM_TOKEN_DELAY_S` (seconds between streamed
tokens), `INSTANT_VLLM_RECORD` (a file: each request's path, headers and JSON body are
appended as one JSON line, so a test can see exactly what reached the upstream),
`INSTANT_VLLM_STUBBORN_CHILD=1` (first start a child process that ignores SIGTERM, as
vLLM's engine workers can, and outlives the server unless it is killed).
Test fixture only: never imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import uvicorn

DEFAULT_MAX_MODEL_LEN = 2048
STUBBORN_CHILD = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True:\n"
    "    time.sleep(3600)\n"
)


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _prompt_tokens(body: dict[str, Any]) -> int:
    source = body.get("messages", body.get("prompt", ""))
    if isinstance(source, list):
        words = 0
        for item in source:
            content = item.get("content", "") if isinstance(item, dict) else item
            words += len(str(content).split()) + (4 if isinstance(item, dict) else 0)
        return max(words, 1)
    return max(len(str(source).split()), 1)


def _prompt_count(prompt: Any) -> int:
    """Prompts in a completions batch (vLLM generates for each)."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return 1


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class Generation:
    """What one request asks the engine to produce, bounded as vLLM bounds it."""

    def __init__(self, body: dict[str, Any], max_model_len: int) -> None:
        self.prompt_tokens = _prompt_tokens(body)
        room = max_model_len - self.prompt_tokens
        asked = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
        self.error: str | None = None
        if asked is not None and asked > room:
            self.error = (
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {asked + self.prompt_tokens} tokens ({self.prompt_tokens} in the "
                f"messages, {asked} in the completion). Please reduce the length."
            )
        self.tokens = max(asked if asked is not None else room, 0)
        n = _positive_int(body, "n") or 1
        prompts = _prompt_count(body.get("prompt"))
        self.choices = n * prompts
        self.generated_choices = max(n, _positive_int(body, "best_of") or 1) * prompts

    @property
    def completion_tokens(self) -> int:
        return self.tokens * self.generated_choices

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def make_app(served: str, api_key: str | None, max_model_len: int) -> Any:
    expected_auth = f"Bearer {api_key}".encode() if api_key else None
    record = os.environ.get("INSTANT_VLLM_RECORD")
    token_delay = float(os.environ.get("INSTANT_VLLM_TOKEN_DELAY_S", "0"))
    models = _json({"object": "list", "data": [{"id": served, "object": "model"}]})
    running = 0

    def metrics() -> bytes:
        return (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{served}"}} {running}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="{served}"}} 0\n'
        ).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal running
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/health":
            await _send(send, 200, b"")
            return
        if path == "/metrics":
            await _send(send, 200, metrics(), b"text/plain; version=0.0.4")
            return
        if expected_auth is not None and headers.get("authorization", "").encode() != (
            expected_auth
        ):
            await _send(send, 401, b'{"error":"Unauthorized"}')
            return
        if path == "/v1/models":
            await _send(send, 200, models)
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            await _send(send, 404, b'{"error":{"message":"no route"}}')
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if record:
            _append(record, {"path": path, "headers": headers, "body": body})
        if not isinstance(body, dict):
            await _send(send, 400, _error("the body is not a JSON object"))
            return
        generation = Generation(body, max_model_len)
        if generation.error:
            await _send(send, 400, _error(generation.error))
            return
        chat = path == "/v1/chat/completions"
        running += 1
        try:
            if body.get("stream") is True:
                await _stream(send, served, chat, body, generation, token_delay)
            else:
                await _send(send, 200, _whole(served, chat, generation))
        finally:
            running -= 1

    return app


def _append(path: str, entry: dict[str, Any]) -> None:
    """One line per request (small and local: a blocking append is fine in a fixture)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _error(message: str) -> bytes:
    return _json({"error": {"message": message, "type": "BadRequestError", "code": 400}})


def _whole(served: str, chat: bool, generation: Generation) -> bytes:
    text = " ".join(["x"] * generation.tokens)
    choices = [
        {"index": i, "finish_reason": "length", "message": {"role": "assistant", "content": text}}
        if chat
        else {"index": i, "finish_reason": "length", "text": text}
        for i in range(generation.choices)
    ]
    return _json(
        {
            "id": "chatcmpl-instant" if chat else "cmpl-instant",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": served,
            "choices": choices,
            "usage": generation.usage(),
        }
    )


async def _stream(
    send: Any,
    served: str,
    chat: bool,
    body: dict[str, Any],
    generation: Generation,
    token_delay: float,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    kind = "chat.completion.chunk" if chat else "text_completion"

    async def event(payload: dict[str, Any]) -> None:
        frame = {"id": "chatcmpl-instant", "object": kind, "created": 0, "model": served}
        frame.update(payload)
        message = b"data: " + _json(frame) + b"\n\n"
        await send({"type": "http.response.body", "body": message, "more_body": True})

    for position in range(generation.tokens):
        last = position == generation.tokens - 1
        for index in range(generation.choices):
            piece = "x" if position == 0 else " x"
            choice: dict[str, Any] = {"index": index, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = {"content": piece}
            else:
                choice["text"] = piece
            await event({"choices": [choice]})
        if token_delay:
            await asyncio.sleep(token_delay)
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        await event({"choices": [], "usage": generation.usage()})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _send(send: Any, status: int, body: bytes, kind: bytes = b"application/json") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="*")  # `serve MODEL` or nothing
    parser.add_argument("--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--api-key")
    args, _ = parser.parse_known_args()
    model = args.model or (args.command[-1] if args.command else "instant")
    served = args.served_model_name or model
    if os.environ.get("INSTANT_VLLM_STUBBORN_CHILD") == "1":
        subprocess.Popen(  # inherits the environment, as an engine worker does
            [sys.executable, "-c", STUBBORN_CHILD], stdin=subprocess.DEVNULL
        )
    delay = float(os.environ.get("INSTANT_VLLM_STARTUP_DELAY_S", "0"))
    if delay:
        time.sleep(delay)
    app = make_app(served, args.api_key or os.environ.get("VLLM_API_KEY"), args.max_model_len)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
