"""Platform incidents for the /status page: operators post, update and resolve them
from the CLI (`auxen incident ...`), straight into this deployment's database. They
belong to no workspace; what they say is public."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import col, select

from auxen.notify import Event, EventType, notify
from auxen.store.db import Database
from auxen.store.models import Incident, IncidentUpdate, Workspace
from auxen.tools.errors import Conflict, InvalidArgument, NotFound

SEVERITIES = ("minor", "major", "critical")
STATUSES = ("investigating", "identified", "monitoring", "resolved")


@dataclass(frozen=True)
class IncidentWithUpdates:
    incident: Incident
    updates: list[IncidentUpdate]  # newest first


def _check(title: str | None, message: str) -> None:
    if title is not None and not 1 <= len(title.strip()) <= 200:
        raise InvalidArgument("the title must be 1-200 characters", param="title")
    if not 1 <= len(message.strip()) <= 2000:
        raise InvalidArgument("the message must be 1-2000 characters", param="message")


async def post_incident(
    db: Database,
    *,
    title: str,
    severity: str,
    message: str,
    status: str = "investigating",
    security: bool = False,
) -> Incident:
    """Open an incident on /status. A security incident (`security`) is also told to
    every workspace: its owners by email (security events always reach them) and its
    webhook endpoints, through the notification queue."""
    _check(title, message)
    if severity not in SEVERITIES:
        raise InvalidArgument(f"severity must be one of: {', '.join(SEVERITIES)}", param="severity")
    if status not in STATUSES:
        raise InvalidArgument(f"status must be one of: {', '.join(STATUSES)}", param="status")
    now = datetime.now(UTC)
    incident = Incident(
        title=title.strip(), severity=severity, status=status, created_at=now, updated_at=now,
        resolved_at=now if status == "resolved" else None,
    )  # fmt: skip
    async with db.system() as session:
        session.add(incident)
        await session.flush()
        session.add(
            IncidentUpdate(
                incident_id=incident.id, status=status, message=message.strip(), created_at=now
            )
        )
        if security:
            workspaces = (await session.exec(select(Workspace.id))).all()
            for workspace_id in workspaces:
                event = Event(
                    EventType.SECURITY_INCIDENT,
                    {"incident_id": incident.id, "title": incident.title, "severity": severity},
                    dedupe_key=f"incident:{incident.id}",
                )
                await notify(session, workspace_id, event)
        await session.commit()
    return incident


async def update_incident(db: Database, incident_id: str, *, status: str, message: str) -> Incident:
    """Add an update; status `resolved` closes the incident."""
    _check(None, message)
    if status not in STATUSES:
        raise InvalidArgument(f"status must be one of: {', '.join(STATUSES)}", param="status")
    now = datetime.now(UTC)
    async with db.system() as session:
        incident = await session.get(Incident, incident_id[:32])
        if incident is None:
            raise NotFound(f"no incident {incident_id[:32]}", param="incident_id")
        if incident.status == "resolved":
            raise Conflict(f"incident {incident.id} is already resolved; post a new one")
        incident.status = status
        incident.updated_at = now
        if status == "resolved":
            incident.resolved_at = now
        session.add(incident)
        session.add(
            IncidentUpdate(
                incident_id=incident.id, status=status, message=message.strip(), created_at=now
            )
        )
        await session.commit()
    return incident


async def list_incidents(db: Database, *, limit: int = 20) -> list[IncidentWithUpdates]:
    """The newest incidents (open ones first), each with its updates."""
    async with db.system() as session:
        rows = list(
            (
                await session.exec(
                    select(Incident).order_by(col(Incident.created_at).desc()).limit(limit)
                )
            ).all()
        )
        ids = [i.id for i in rows]
        updates = (
            (
                await session.exec(
                    select(IncidentUpdate)
                    .where(col(IncidentUpdate.incident_id).in_(ids))
                    .order_by(col(IncidentUpdate.created_at).desc())
                )
            ).all()
            if ids
            else []
        )
    rows.sort(key=lambda i: i.status == "resolved")  # stable: open first, newest first
    return [IncidentWithUpdates(i, [u for u in updates if u.incident_id == i.id]) for i in rows]
