"""What can be notified, who hears about it by default, and how it reads in an email.

An event carries ids, kinds, amounts and times only: never prompt, completion or
retrieved text (`Event` refuses anything but short scalars).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

Scalar = str | int | float | bool | None
MAX_VALUE_CHARS = 500


class EventType(enum.StrEnum):
    SPEND_LIMIT_NEAR = "spend_limit_near"  # a cap or the balance is nearly used up
    SPEND_LIMIT_REACHED = "spend_limit_reached"  # ... reached; names the instance it stopped
    INSTANCE_FAILED = "instance_failed"
    INSTANCE_DESTROYED = "instance_destroyed"  # by its TTL or idle timeout
    NEW_SIGN_IN = "new_sign_in"  # a person signed in from a browser not seen before
    MFA_ENABLED = "mfa_enabled"
    MFA_DISABLED = "mfa_disabled"
    API_KEY_CREATED = "api_key_created"
    API_KEYS_DISABLED = "api_keys_disabled"  # their creator left the workspace
    OAUTH_CLIENT_AUTHORIZED = "oauth_client_authorized"
    SECURITY_INCIDENT = "security_incident"  # posted by an operator


# Owners always get these by email, whatever the workspace's preferences say.
SECURITY_EVENTS = frozenset(
    {
        EventType.NEW_SIGN_IN,
        EventType.MFA_ENABLED,
        EventType.MFA_DISABLED,
        EventType.API_KEY_CREATED,
        EventType.API_KEYS_DISABLED,
        EventType.OAUTH_CLIENT_AUTHORIZED,
        EventType.SECURITY_INCIDENT,
    }
)
# About one person's account: that person is told too, whatever their role.
PERSONAL_EVENTS = frozenset({EventType.NEW_SIGN_IN, EventType.MFA_ENABLED, EventType.MFA_DISABLED})

SUBJECTS: dict[EventType, str] = {
    EventType.SPEND_LIMIT_NEAR: "Spending limit nearly reached ({limit})",
    EventType.SPEND_LIMIT_REACHED: "Spending limit reached: instance {instance_id} stopped",
    EventType.INSTANCE_FAILED: "Instance {instance_id} failed",
    EventType.INSTANCE_DESTROYED: "Instance {instance_id} destroyed ({reason})",
    EventType.NEW_SIGN_IN: "New sign-in to your Auxen account",
    EventType.MFA_ENABLED: "Two-factor authentication turned on",
    EventType.MFA_DISABLED: "Two-factor authentication turned off",
    EventType.API_KEY_CREATED: "New API key {key_id}",
    EventType.API_KEYS_DISABLED: "{count} API key(s) disabled: their creator left the workspace",
    EventType.OAUTH_CLIENT_AUTHORIZED: "New app authorized: {client_name}",
    EventType.SECURITY_INCIDENT: "Security notice: {title}",
}


@dataclass(frozen=True)
class Event:
    type: EventType
    data: Mapping[str, Scalar] = field(default_factory=dict)
    livemode: bool = True
    user_id: str | None = None  # the person a personal event is about
    dedupe_key: str | None = None  # at most one notification per workspace and key

    def __post_init__(self) -> None:
        for key, value in self.data.items():
            if not isinstance(value, Scalar):
                raise TypeError(f"event data {key!r} must be a scalar")
            if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
                raise ValueError(f"event data {key!r} is longer than {MAX_VALUE_CHARS}")


@dataclass(frozen=True)
class EventDefaults:
    email_roles: tuple[str, ...] = ("owner",)
    webhook: bool = True


DEFAULTS = EventDefaults()


class _Blank(dict[str, Scalar]):
    def __missing__(self, key: str) -> str:
        return "?"


def subject(event: str, data: Mapping[str, Scalar]) -> str:
    known = event in {e.value for e in EventType}
    template = SUBJECTS.get(EventType(event), event) if known else event
    return "[Auxen] " + template.format_map(_Blank(data))[:150]


def email_text(event: str, workspace_id: str, data: Mapping[str, Scalar], base_url: str) -> str:
    lines = [subject(event, data).removeprefix("[Auxen] "), ""]
    lines += [f"{key}: {value}" for key, value in data.items()]
    lines += [
        f"workspace: {workspace_id}",
        "",
        f"Manage notifications: {base_url}/account",
        "You get this because of your role in the workspace; owners always get security notices.",
    ]
    return "\n".join(lines) + "\n"
