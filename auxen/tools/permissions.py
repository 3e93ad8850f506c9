"""Who may do what: the one table of permissions, and the roles they need.

Every operation in `auxen.tools` that REST, MCP or the CLI call starts with
`caller.require(Permission.X)`, so the three adapters cannot disagree. Roles are ordered
member < admin < owner; each permission names the least role that holds it.

- Member: instances (provision, list, get, query, destroy, instance keys), knowledge
  bases, usage, reading the balance, the model catalog, seeing who else is a member.
- Admin: + inviting, changing and removing members (not admins), account API keys,
  spending caps, alert webhooks, buying credits, reading the audit log, the workspace's
  own provider credentials (BYOK).
- Owner: + deleting the workspace, transferring ownership, changing or removing admins.

Account API keys carry a role and the person who made them: a key acts with the lower of
its own role and its creator's current role in the workspace
(`auxen.tools.context.effective_role`), and
stops working when its creator leaves. OAuth grants act with the person's current
membership role. Both are read when the key or token is checked, so a demotion or a
removal applies at once (within the key cache's few seconds in other processes).
Instance keys (`auxk_`) only ever reach their own instance's inference endpoint.

Modes: a test-mode caller (an `auxen_test_` key, the dashboard's test switch) uses only
the permissions whose objects are kept per mode (`PER_MODE`), and then sees and changes
test-mode objects only (its sessions are mode-scoped, see `auxen.store.modes`). The rest
act on the workspace as a whole (its people, audit log, provider accounts, where
notifications go) and are refused to test-mode callers. docs/roles.md has the table.
"""

from __future__ import annotations

import enum

from auxen.store.models import Role

RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}


class Permission(enum.StrEnum):
    CATALOG_READ = "catalog:read"  # list_models, quote_instance
    INSTANCES_READ = "instances:read"  # list_instances, get_instance, list_attachments
    INSTANCES_WRITE = "instances:write"  # provision_instance, destroy_instance
    INSTANCE_KEYS = "instance_keys"  # create/revoke auxk_ keys of an instance
    QUERY = "query"  # query_instance, the OpenAI-compatible endpoints
    KNOWLEDGE = "knowledge"  # knowledge bases, documents, search, attach/detach
    USAGE_READ = "usage:read"  # get_usage
    BALANCE_READ = "balance:read"  # get_balance
    MEMBERS_READ = "members:read"  # list_members
    MEMBERS_MANAGE = "members:manage"  # invites, role changes, removals (of members)
    ACCOUNT_KEYS = "account_keys"  # create/list/revoke auxen_live_/auxen_test_ keys
    CAPS = "caps"  # set_spending_cap
    ALERT_WEBHOOK = "alert_webhook"  # set_alert_webhook
    BUY_CREDITS = "buy_credits"  # buy_credits (Stripe Checkout)
    AUDIT_READ = "audit:read"  # list_audit_events
    LEDGER_READ = "ledger:read"  # list_ledger (the statement on the billing page)
    NOTIFICATIONS_READ = "notifications:read"  # webhook endpoints, deliveries
    CONVERSATIONS = "conversations"  # get/list/delete kept conversations (history: true)
    NOTIFICATIONS_MANAGE = "notifications:manage"  # add/delete webhook endpoints
    PREFERENCES_READ = "notification_preferences:read"  # where each event goes
    PREFERENCES_MANAGE = "notification_preferences:manage"  # change that
    PROVIDER_CREDENTIALS = "provider_credentials"  # BYOK: list/set/delete (never read back)
    ADMINS_MANAGE = "admins:manage"  # change an admin's role, remove an admin
    OWNERSHIP_TRANSFER = "ownership:transfer"  # transfer_ownership
    WORKSPACE_DELETE = "workspace:delete"  # delete_workspace


LEAST_ROLE: dict[Permission, Role] = {
    Permission.CATALOG_READ: Role.MEMBER,
    Permission.INSTANCES_READ: Role.MEMBER,
    Permission.INSTANCES_WRITE: Role.MEMBER,
    Permission.INSTANCE_KEYS: Role.MEMBER,
    Permission.QUERY: Role.MEMBER,
    Permission.KNOWLEDGE: Role.MEMBER,
    Permission.USAGE_READ: Role.MEMBER,
    Permission.BALANCE_READ: Role.MEMBER,
    Permission.MEMBERS_READ: Role.MEMBER,
    Permission.MEMBERS_MANAGE: Role.ADMIN,
    Permission.ACCOUNT_KEYS: Role.ADMIN,
    Permission.CAPS: Role.ADMIN,
    Permission.ALERT_WEBHOOK: Role.ADMIN,
    Permission.BUY_CREDITS: Role.ADMIN,
    Permission.AUDIT_READ: Role.ADMIN,
    Permission.LEDGER_READ: Role.ADMIN,
    Permission.NOTIFICATIONS_READ: Role.MEMBER,
    Permission.CONVERSATIONS: Role.MEMBER,
    Permission.NOTIFICATIONS_MANAGE: Role.ADMIN,
    Permission.PREFERENCES_READ: Role.MEMBER,
    Permission.PREFERENCES_MANAGE: Role.ADMIN,
    Permission.PROVIDER_CREDENTIALS: Role.ADMIN,
    Permission.ADMINS_MANAGE: Role.OWNER,
    Permission.OWNERSHIP_TRANSFER: Role.OWNER,
    Permission.WORKSPACE_DELETE: Role.OWNER,
}

# What an instance key may do besides nothing: query its own instance (and read it).
INSTANCE_KEY_PERMISSIONS = frozenset({Permission.QUERY})

# Permissions whose objects are kept per mode (instances and their keys, usage,
# conversations, knowledge bases; account keys; the ledger, caps and alerts; webhook
# endpoints and what was delivered to them) or that touch no object (the catalog): a
# test-mode caller may use them, on test-mode objects only. Every other permission acts
# on the workspace as a whole and is live-mode only.
PER_MODE = frozenset(
    {
        Permission.CATALOG_READ,
        Permission.INSTANCES_READ,
        Permission.INSTANCES_WRITE,
        Permission.INSTANCE_KEYS,
        Permission.QUERY,
        Permission.KNOWLEDGE,
        Permission.USAGE_READ,
        Permission.BALANCE_READ,
        Permission.ACCOUNT_KEYS,
        Permission.CAPS,
        Permission.ALERT_WEBHOOK,
        Permission.BUY_CREDITS,
        Permission.LEDGER_READ,
        Permission.NOTIFICATIONS_READ,
        Permission.NOTIFICATIONS_MANAGE,
        Permission.CONVERSATIONS,
    }
)


def at_least(role: Role, needed: Role) -> bool:
    return RANK[role] >= RANK[needed]


def role_may(role: Role, permission: Permission) -> bool:
    return at_least(role, LEAST_ROLE[permission])
