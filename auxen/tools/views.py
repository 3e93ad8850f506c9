"""What callers see of stored objects: the same dictionaries for REST, MCP and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from auxen.store.models import ApiKey, Instance, as_utc


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def micros_to_usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros else "0"


def instance_view(instance: Instance, base_url: str) -> dict[str, Any]:
    return {
        "id": instance.id,
        "object": "instance",
        "livemode": instance.livemode,
        "model": instance.model,
        "gpu_type": instance.gpu_type,
        "tier": instance.tier,
        "provider": instance.provider,
        "state": instance.state.value,
        "endpoint": f"{base_url}/v1/instances/{instance.id}",
        "hourly_price_micros": instance.hourly_price_micros,
        "hourly_price_usd": micros_to_usd(instance.hourly_price_micros),
        "ttl_seconds": instance.ttl_seconds,
        "expires_at": _iso(instance.expires_at),
        "idempotency_key": instance.idempotency_key,
        "created_at": _iso(instance.created_at),
        "ready_at": _iso(instance.ready_at),
        "destroyed_at": _iso(instance.destroyed_at),
        "destroy_reason": instance.destroy_reason,
        "last_error": instance.last_error,
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "object": "api_key",
        "kind": key.kind.value,
        "livemode": key.livemode,
        "instance_id": key.instance_id,
        "name": key.name,
        "prefix": key.display_prefix,
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
        "revoked_at": _iso(key.revoked_at),
    }
