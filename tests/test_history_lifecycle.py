"""The reconciler's own destroys and failures delete an instance's conversations too, and
tell the workspace (instance_failed, instance_destroyed): the real InstanceManager and
local provider on SQLite and PostgreSQL, no vLLM needed (the instances' resources are
gone, which is what the reconciler repairs)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from auxen.auth.sealing import seal
from auxen.config import Settings
from auxen.inference.lifecycle import InstanceManager
from auxen.inference.providers import build_provider
from auxen.store.db import Database
from auxen.store.models import Conversation, ConversationTurn, Instance, InstanceState, Workspace


def _instance(ws: str, *, provider: str = "local", expires_in_s: float = 3600) -> Instance:
    now = datetime.now(UTC)
    return Instance(
        workspace_id=ws, livemode=True, model="org/m", gpu_type="cpu", tier="dedicated",
        provider=provider, provider_id="999999999", state=InstanceState.READY,
        hourly_price_micros=0, ttl_seconds=3600, history=True,
        expires_at=now + timedelta(seconds=expires_in_s), created_at=now, ready_at=now,
    )  # fmt: skip


def test_the_reconciler_deletes_the_conversations_of_instances_it_fails_or_expires(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url)

    async def go() -> None:
        db = Database(database_url)
        await db.migrate()
        manager = InstanceManager(db, build_provider(settings), settings)
        try:
            ws, other_ws = Workspace(name="mine"), Workspace(name="theirs")
            lost = _instance(ws.id)  # ready, but its process is gone
            expired = _instance(ws.id, expires_in_s=-5)
            elsewhere = _instance(other_ws.id, provider="runpod")
            async with db.system() as session:
                session.add_all([ws, other_ws])
                await session.flush()
                session.add_all([lost, expired, elsewhere])
                await session.flush()
                for instance in (lost, expired, elsewhere):
                    conversation = Conversation(
                        workspace_id=instance.workspace_id, instance_id=instance.id,
                        livemode=True, turns=1, tokens=1,
                    )  # fmt: skip
                    session.add(conversation)
                    await session.flush()
                    session.add(
                        ConversationTurn(
                            workspace_id=instance.workspace_id, conversation_id=conversation.id,
                            seq=1, tokens=1,
                            sealed=seal(settings.master_key_bytes, instance.workspace_id, "x"),
                        )
                    )  # fmt: skip
                await session.commit()

            report = await manager.reconcile()
            assert report.failed == [lost.id] and report.destroyed == [expired.id]

            async with db.engine.connect() as conn:

                async def rows(query: str, **params: str) -> list[tuple[object, ...]]:
                    return [tuple(r) for r in (await conn.execute(sa.text(query), params)).all()]

                assert await rows("SELECT instance_id FROM conversation") == [(elsewhere.id,)]
                assert len(await rows("SELECT id FROM conversation_turn")) == 1
                told = await rows(
                    "SELECT event, data_json FROM notification WHERE workspace_id = :w", w=ws.id
                )
            by_event = {event: json.loads(str(data)) for event, data in told}
            assert by_event["instance_failed"]["instance_id"] == lost.id
            assert by_event["instance_destroyed"] == {
                "instance_id": expired.id, "model": "org/m", "reason": "ttl_expired",
            }  # fmt: skip
        finally:
            await manager.close()
            await db.close()

    asyncio.run(go())
