"""The most a per-token request can make its upstream generate, and the body rewritten
so that the upstream cannot generate more than that.

vLLM generates, for each prompt of a request (a completions `prompt` may be a batch),
`max(n, best_of)` sequences (with `use_beam_search`, that many beams), each of up to
`max_completion_tokens`, else `max_tokens`, else whatever is left of the context.
`min_tokens` and `ignore_eos` only make it use that room; they never add to it. So the
bound is prompts x sequences x tokens each, and the body leaves here with that one
token limit written in every field vLLM reads it from (chat: both `max_tokens` and
`max_completion_tokens`; completions: `max_tokens`), the caller's preferred one (vLLM's
order) or the deployment's default when it set none. A prompt is at most as many tokens
as its JSON has bytes (a token is at least one byte; non-ASCII text is escaped to six),
plus an allowance for what a chat template adds. A field that makes the bound
uncomputable is refused, naming it, before anything is reserved or sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from auxen.tools.errors import InvalidArgument

# Tokens a chat template may add around the messages (role markers, a default system
# prompt): generous, and worth a fraction of a micro-dollar at any shared price.
CHAT_TEMPLATE_ALLOWANCE = 256
# What becomes prompt tokens upstream (tools are rendered into the prompt by the template).
PROMPT_FIELDS = ("messages", "prompt", "suffix", "tools")


@dataclass(frozen=True)
class GenerationBound:
    prompt_tokens: int  # at most this many prompt tokens
    prompts: int  # completions batches: one generation per prompt
    sequences: int  # per prompt: max(n, best_of), or the beam width
    tokens_each: int  # the limit written into the body

    @property
    def completion_tokens(self) -> int:
        return self.prompts * self.sequences * self.tokens_each


def bound_generation(
    body: dict[str, Any], *, chat: bool, default_max_tokens: int
) -> GenerationBound:
    """The request's bound, with `body` rewritten to hold to it; InvalidArgument naming
    the field when one makes the bound uncomputable."""
    max_completion = _count(body, "max_completion_tokens", minimum=1)
    max_tokens = _count(body, "max_tokens", minimum=1)
    tokens_each = max_completion or max_tokens or default_max_tokens
    n = _count(body, "n", minimum=1) or 1
    best_of = _count(body, "best_of", minimum=1) or n
    beam = body.get("use_beam_search")
    if beam is not None and not isinstance(beam, bool):
        raise InvalidArgument("use_beam_search must be true or false", param="use_beam_search")
    min_tokens = _count(body, "min_tokens", minimum=0)
    if min_tokens is not None and min_tokens > tokens_each:
        raise InvalidArgument(
            f"min_tokens ({min_tokens}) is more than the token limit of this request "
            f"({tokens_each}); lower it or raise max_completion_tokens",
            param="min_tokens",
        )
    prompts = 1 if chat else _prompt_count(body.get("prompt"))
    prompt_bytes = len(json.dumps([body[name] for name in PROMPT_FIELDS if name in body]).encode())
    body["max_tokens"] = tokens_each
    if chat:
        body["max_completion_tokens"] = tokens_each
    else:
        body.pop("max_completion_tokens", None)  # not a completions field: vLLM ignores it
    return GenerationBound(
        prompt_tokens=prompt_bytes + (CHAT_TEMPLATE_ALLOWANCE if chat else 0),
        prompts=prompts,
        sequences=max(n, best_of),
        tokens_each=tokens_each,
    )


def _count(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    """An optional whole-number field (null is absent)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(
            f"{name} must be a whole number of at least {minimum}; the cost of this request "
            "is reserved from it before it is sent",
            param=name,
        )
    return value


def _prompt_count(prompt: object) -> int:
    """How many prompts a completions request carries (vLLM generates for each)."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return len(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return 1  # one prompt as token ids
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return len(prompt)
    raise InvalidArgument(
        "prompt must be a string, a list of strings, a list of token ids, or a list of "
        "lists of token ids",
        param="prompt",
    )
