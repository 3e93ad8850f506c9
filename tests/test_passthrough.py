"""Passthrough sanitising: what a caller's body may carry to vLLM (the rules; the
journey tests send the same bodies through a real server and a real vLLM)."""

from __future__ import annotations

from typing import Any

import pytest

from auxen.inference.passthrough import FORWARDED, sanitise
from auxen.tools.errors import InvalidArgument

MESSAGES = [{"role": "user", "content": "hello"}]


def refused(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidArgument) as caught:
        sanitise(body)
    assert caught.value.param, caught.value
    return str(caught.value.param)


def test_generation_fields_pass_unchanged() -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 5,
        "temperature": 0.2,
        "stop": ["\n"],
        "top_k": 3,
        "min_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "retrieval": {"top_k": 2},
    }
    assert sanitise(dict(body)) == body


def test_extra_body_is_checked_and_flattened() -> None:
    body = sanitise({"messages": MESSAGES, "extra_body": {"top_k": 4, "repetition_penalty": 1.1}})
    assert body == {"messages": MESSAGES, "top_k": 4, "repetition_penalty": 1.1}
    assert refused({"messages": MESSAGES, "extra_body": "x"}) == "extra_body"
    assert refused({"top_k": 1, "extra_body": {"top_k": 2}}) == "extra_body.top_k"


def test_unknown_fields_are_refused_by_name() -> None:
    assert refused({"messages": MESSAGES, "chat_template": "{{ secrets }}"}) == "chat_template"
    assert refused({"messages": MESSAGES, "extra_body": {"request_id": "x"}}) == "request_id"
    assert "chat_template" not in FORWARDED


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES, "api_key": "sk-x"}, "api_key"),
        ({"messages": MESSAGES, "Authorization": "Bearer x"}, "Authorization"),
        ({"messages": MESSAGES, "headers": {"X-Trace": "1"}}, "headers"),
        ({"messages": MESSAGES, "extra_body": {"cookie": "sid=1"}}, "extra_body.cookie"),
        (
            {"messages": MESSAGES, "extra_body": {"vllm_xargs": {"hf-token": "hf_x"}}},
            "extra_body.vllm_xargs.hf-token",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "x-api-key": "k"}]},
            "messages.0.x-api-key",
        ),
        ({"messages": MESSAGES, "user": "https://bob:hunter2@example.com/"}, "user"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "http://u:p@10.0.0.1/x"}}
                        ],
                    }
                ]
            },
            "messages.0.content.0.image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": "use auxen_live_" + "a" * 30}]},
            "messages.0.content",
        ),
        ({"prompt": ["ok", "auxk_" + "b" * 24]}, "prompt.1"),
        (
            {"messages": MESSAGES, "extra_body": {"openai_api_key": "sk"}},
            "extra_body.openai_api_key",
        ),
    ],
)
def test_credentials_anywhere_are_refused_and_named(body: dict[str, Any], param: str) -> None:
    assert refused(body) == param


def test_schemas_may_name_any_property() -> None:
    schema = {"type": "object", "properties": {"password": {"type": "string"}, "token": {}}}
    body = {
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "tools": [{"type": "function", "function": {"name": "login", "parameters": schema}}],
        "extra_body": {"guided_json": schema},
    }
    forwarded = sanitise(body)
    assert forwarded["guided_json"] == schema
    # ...but a URL with credentials inside a schema is still a credential.
    leaky = {"type": "string", "default": "https://a:b@example.com"}
    assert refused({"messages": MESSAGES, "guided_json": leaky}) == "guided_json.default"


def test_plain_urls_and_token_counts_are_not_credentials() -> None:
    body = {
        "messages": [{"role": "user", "content": "read https://example.com/a?b=c and tell me"}],
        "max_tokens": 3,
        "max_completion_tokens": 3,
        "skip_special_tokens": True,
        "stop_token_ids": [2],
    }
    assert sanitise(dict(body)) == body
