"""Notifications: events worth telling a person, queued in the database and delivered
by email (SMTP) and signed webhooks off the path that raised them.

`await notify(db_or_session, workspace_id, Event(...))` only inserts a row (in the
caller's transaction when given its session); `NotificationWorker` (started with the
server, like the reconciler) fans each one out to addresses and endpoints, claims
deliveries with a lease, sends them, logs every attempt and retries with backoff.
"""

from auxen.notify.events import SECURITY_EVENTS, Event, EventType
from auxen.notify.queue import notify, notify_user

__all__ = ["SECURITY_EVENTS", "Event", "EventType", "notify", "notify_user"]
