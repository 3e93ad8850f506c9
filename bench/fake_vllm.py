"""An instant-answer OpenAI-compatible upstream: the benchmark's stand-in for vLLM.

It takes vLLM's command-line shape (`--model`, `--port`, `--served-model-name`, ...) and
`VLLM_API_KEY`, so Auxen's local provider launches it exactly as it launches vLLM. It
answers at once with fixed token counts, so what a benchmark measures is Auxen's own cost.
Benchmark fixture only: never used by tests or the product.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import uvicorn

COMPLETION_TOKENS = 16


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def make_app(served: str, api_key: str | None) -> Any:
    chat = _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": "x " * COMPLETION_TOKENS},
                }
            ],
            "usage": {
                "prompt_tokens": 8,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": 8 + COMPLETION_TOKENS,
            },
        }
    )
    completion = _json(
        {
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": 0,
            "model": served,
            "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    models = _json({"object": "list", "data": [{"id": served, "object": "model"}]})

    def chunk(content: str | None, finish: str | None = None) -> bytes:
        delta = {"content": content} if content is not None else {}
        return (
            b"data: "
            + _json(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": served,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )
            + b"\n\n"
        )

    stream_body = (
        [chunk("x ") for _ in range(COMPLETION_TOKENS - 1)]
        + [chunk("x", "length")]
        + [
            b"data: "
            + _json(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": served,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 8,
                        "completion_tokens": COMPLETION_TOKENS,
                        "total_tokens": 8 + COMPLETION_TOKENS,
                    },
                }
            )
            + b"\n\n",
            b"data: [DONE]\n\n",
        ]
    )
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if path == "/health":
            await _send(send, 200, b"")
            return
        if (
            expected_auth is not None
            and dict(scope["headers"]).get(b"authorization") != expected_auth
        ):
            await _send(send, 401, b'{"error":"Unauthorized"}')
            return
        if path == "/v1/models":
            await _send(send, 200, models)
        elif path == "/v1/completions":
            await _send(send, 200, completion)
        elif path == "/v1/chat/completions":
            if b'"stream": true' in body or b'"stream":true' in body:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")],
                    }
                )
                for piece in stream_body:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await _send(send, 200, chat)
        else:
            await _send(send, 404, b'{"error":{"message":"no route"}}')

    return app


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--served-model-name", default="bench/instant")
    args, _ = parser.parse_known_args()
    app = make_app(args.served_model_name, os.environ.get("VLLM_API_KEY"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
