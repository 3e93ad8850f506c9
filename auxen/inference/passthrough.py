"""What a caller's body may carry to an instance's vLLM server.

Only generation parameters named below are forwarded (OpenAI's, plus vLLM's documented
sampling extras); any other top-level field is refused with a 400 naming it. A body that
carries credentials anywhere, at any depth, is refused too: a field named like a secret
(`api_key`, `authorization`, `cookie`, `headers`, `token`, ...), a URL with a user or
password in it, or an Auxen key. `extra_body` (what the OpenAI SDK sends its extras as,
when a raw client nests them) is checked by the same rules and flattened, as the SDK
would have done. Schemas a caller supplies (`response_format.json_schema`, tool
`parameters`, guided JSON) may name any property they like, so only their values are
checked there. The caller's own headers never reach upstream: the gateway builds the
upstream request from the instance's own key alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from auxen.tools.errors import InvalidArgument

OPENAI_FIELDS = frozenset(
    {
        "model", "messages", "prompt", "suffix", "echo", "best_of",
        "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
        "stream", "stream_options", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "seed", "user", "response_format", "tools",
        "tool_choice", "parallel_tool_calls",
    }
)  # fmt: skip
# vLLM's sampling and structured-output extras (SamplingParams / the OpenAI server's
# extra fields). Absent on purpose: chat_template (a caller-supplied Jinja program),
# mm_processor_kwargs, request_id, priority, kv_transfer_params, cache_salt.
VLLM_FIELDS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "length_penalty", "stop_token_ids",
        "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
        "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs",
        "allowed_token_ids", "bad_words", "guided_json", "guided_regex", "guided_choice",
        "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern",
        "structured_outputs", "add_generation_prompt", "continue_final_message",
        "add_special_tokens", "return_tokens_as_token_ids", "use_beam_search",
    }
)  # fmt: skip
FORWARDED = OPENAI_FIELDS | VLLM_FIELDS
# Auxen's own fields: consumed by the control plane, never forwarded.
OWN_FIELDS = frozenset({"retrieval"})

# Field names that carry credentials (compared lower-cased, with "-" as "_").
SECRET_NAMES = frozenset(
    {
        "authorization", "proxy_authorization", "cookie", "set_cookie", "headers",
        "extra_headers", "api_key", "apikey", "x_api_key", "api_token", "token",
        "access_token", "refresh_token", "id_token", "bearer", "secret", "client_secret",
        "password", "passwd", "credentials", "credential", "private_key", "session",
        "hf_token", "openai_api_key",
    }
)  # fmt: skip
SECRET_SUFFIXES = ("_api_key", "_token", "_secret", "_password", "_credentials")
# Values whose subtree is a caller's JSON schema: property names there are data.
SCHEMA_PATHS = (
    ("response_format", "json_schema"),
    ("guided_json",),
    ("structured_outputs",),
    ("tools", "*", "function", "parameters"),
    ("extra_body", "guided_json"),
    ("extra_body", "structured_outputs"),
    ("extra_body", "response_format", "json_schema"),
)
# The scan runs in time linear in the text (tests/test_patterns.py holds every pattern
# Auxen applies to a caller's text, with the inputs that would make it backtrack). A key
# starts at a word boundary with a literal prefix, and the run after it is taken whole.
# A URL with a user or password has an "@" in its authority: after a scheme's "://",
# before any "/", "?" or "#" (as urlsplit reads it). Starting from the literal "://"
# (the scheme's last character checked behind it) rather than from a scheme pattern,
# which would be tried at every letter of a long word and scan on from each, is what
# keeps it linear: each authority scan stops at a "/", so no two scans cover the same
# text, and the literal lets the engine skip ahead quickly.
AUXEN_KEY = re.compile(r"\b(?:auxen_(?:live|test)_|auxk_)[A-Za-z0-9_]{16,}")
URL_USERINFO = re.compile(r"://(?<=[A-Za-z0-9+.\-]://)[^\s\"'<>/?#@]*@")


def sanitise(body: dict[str, Any]) -> dict[str, Any]:
    """The body to forward, or InvalidArgument naming the first offending field."""
    for path, key, value in _walk(body, ()):
        if key is not None and _is_secret_name(key) and not _in_schema(path):
            raise _credential(_dotted((*path, key)))
        if isinstance(value, str) and _carries_secret(value):
            raise _credential(_dotted(path if key is None else (*path, key)))
    extra = body.pop("extra_body", None)
    if extra is not None:
        if not isinstance(extra, dict):
            raise InvalidArgument("extra_body must be an object", param="extra_body")
        for name, value in extra.items():
            if name in body:
                raise InvalidArgument(
                    f"{name} is given both at the top level and in extra_body",
                    param=f"extra_body.{name}",
                )
            body[name] = value
    for name in body:
        if name not in FORWARDED and name not in OWN_FIELDS:
            raise InvalidArgument(
                f"{name} is not a generation parameter this endpoint forwards; see "
                "docs/security.md for the accepted OpenAI and vLLM fields",
                param=name,
            )
    return body


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str | None, Any]]:
    """(path of the container, key in it or None for list items, value), depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            key = str(key)
            yield path, key, item
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, str(index)), None, item
            yield from _walk(item, (*path, str(index)))


def _in_schema(path: tuple[str, ...]) -> bool:
    for pattern in SCHEMA_PATHS:
        if len(path) >= len(pattern) and all(
            want in ("*", got) for want, got in zip(pattern, path, strict=False)
        ):
            return True
    return False


def _is_secret_name(name: str) -> bool:
    norm = name.lower().replace("-", "_")
    return norm in SECRET_NAMES or norm.endswith(SECRET_SUFFIXES)


def _carries_secret(text: str) -> bool:
    if ("auxk_" in text or "auxen_" in text) and AUXEN_KEY.search(text) is not None:
        return True
    return URL_USERINFO.search(text) is not None


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"


def _credential(param: str) -> InvalidArgument:
    return InvalidArgument(
        f"{param} carries a credential (a key, token, cookie, header or a URL with a "
        "user or password); credentials are never forwarded to the model server, so "
        "the request was refused. Authenticate with the Authorization header only",
        param=param,
    )
