"""`auxen`: serve, init, migrate, and instances/keys/usage over the REST API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from auxen.cli.client import ApiError, AuxenClient
from auxen.config import ConfigError, Settings
from auxen.logs import configure_logging
from auxen.tools.errors import AuxenError

app = typer.Typer(
    help="Auxen: private LLM inference on dedicated vLLM instances.", no_args_is_help=True
)
instances_app = typer.Typer(help="Provision, inspect and destroy instances.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(instances_app, name="instances")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print raw JSON")]


def _client() -> AuxenClient:
    try:
        return AuxenClient()
    except ApiError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from None


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        return _client().request(method, path, **kwargs)
    except ApiError as exc:
        where = f" ({exc.param})" if exc.param else ""
        err.print(f"[red]error{where}:[/] {exc.message}")
        raise typer.Exit(1) from None


# -- server ------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Server processes on this port (PostgreSQL only)"),
    ] = 1,
) -> None:
    """Run the control plane (REST, inference proxy) with uvicorn."""
    import logging
    import os

    import uvicorn

    from auxen.app import create_app

    # Worker processes read their settings from the environment, as this one does.
    if host:
        os.environ["AUXEN_HOST"] = host
    if port:
        os.environ["AUXEN_PORT"] = str(port)
    settings = Settings()
    configure_logging(logging.INFO)
    if workers > 1 and settings.resolved_database_url.startswith("sqlite"):
        err.print(
            "[red]error (--workers):[/] several server processes need a PostgreSQL database "
            "(set AUXEN_DATABASE_URL=postgresql://...); on SQLite run one process"
        )
        raise typer.Exit(2)
    try:
        application = create_app(settings) if workers == 1 else None
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    data = settings.data_dir.resolve()
    err.print(
        f"[bold]Auxen[/] on {settings.base_url}  (data: {data}, "
        f"database: {_redact(settings.resolved_database_url)}, "
        f"provider: {settings.provider})"
    )
    if not (data / "auxen.db").exists() and settings.database_url is None:
        err.print(
            "First start: create a workspace and its first key with "
            "[bold]auxen init --email you@example.com[/]"
        )
    uvicorn.run(
        application or "auxen.app:create_app",
        factory=application is None,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our handler, with its redaction filter (auxen.logs)
        access_log=False,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@app.command()
def mcp() -> None:
    """Run the MCP server on stdio for a local agent (credentials from the environment).

    AUXEN_API_KEY is required. With AUXEN_URL, tools run on that Auxen server; without
    it, they run in this process on the local database, as `auxen serve` would.
    """
    import logging
    import os

    import anyio

    from auxen.mcp_server import stdio

    # stdout is the JSON-RPC channel: every log line goes to stderr (configure_logging's
    # handler writes there), redacted.
    configure_logging(logging.WARNING)
    api_key = os.environ.get("AUXEN_API_KEY", "").strip()
    if not api_key:
        err.print(
            "[red]error:[/] AUXEN_API_KEY is not set; create a key with "
            "`auxen init` or `auxen keys create` and put it in the MCP client's env"
        )
        raise typer.Exit(2)
    url = os.environ.get("AUXEN_URL", "").strip()
    try:
        if url:
            anyio.run(stdio.serve_remote, url, api_key)
        else:
            anyio.run(stdio.serve_embedded, Settings(), api_key)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    except AuxenError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from None


@app.command()
def init(
    email: Annotated[str, typer.Option(help="Owner's email address")],
    workspace: Annotated[str, typer.Option(help="Workspace name")] = "default",
    test: Annotated[bool, typer.Option("--test", help="Make a test-mode key")] = False,
) -> None:
    """Create a workspace, its owner, and a first account key (printed once)."""
    from auxen.runtime import Runtime
    from auxen.tools.workspaces import create_workspace

    async def run() -> Any:
        rt = Runtime.build(Settings())
        try:
            await rt.db.migrate()
            return await create_workspace(rt, name=workspace, owner_email=email, livemode=not test)
        finally:
            await rt.db.close()

    try:
        made = asyncio.run(run())
    except (AuxenError, ConfigError) as exc:
        err.print(f"[red]error:[/] {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from None
    out.print(
        f"workspace [bold]{made.workspace.id}[/] ({made.workspace.name}), owner {made.owner.email}"
    )
    out.print("API key (shown once, store it now):")
    out.print(made.key_plaintext, markup=False, highlight=False)
    out.print("\nexport AUXEN_API_KEY=<the key above>", highlight=False)


credits_app = typer.Typer(help="Credits (operators).", no_args_is_help=True)
app.add_typer(credits_app, name="credits")


@credits_app.command("grant")
def credits_grant(
    workspace: Annotated[str, typer.Option(help="Workspace id (ws_...)")],
    usd: Annotated[str, typer.Option(help="Dollars to grant, e.g. 25 or 2.50")],
    reference: Annotated[
        str, typer.Option(help="Unique reference; granting twice with it grants once")
    ],
    test: Annotated[bool, typer.Option("--test", help="Test-mode credits")] = False,
) -> None:
    """Give a workspace credits without a payment (support, trials), straight into the
    ledger on this server's database."""
    from decimal import Decimal, InvalidOperation

    from auxen.runtime import Runtime
    from auxen.store.models import LedgerKind

    try:
        micros = int(Decimal(usd) * 1_000_000)
    except InvalidOperation:
        micros = 0
    if not 0 < micros <= 1_000_000 * 1_000_000:
        err.print("[red]error:[/] --usd must be a positive amount of dollars")
        raise typer.Exit(2)

    async def run() -> bool:
        rt = Runtime.build(Settings())
        try:
            await rt.db.migrate()
            return await rt.ledger.credit(
                workspace, not test, micros, kind=LedgerKind.GRANT, reference=reference,
                note="granted by an operator",
            )  # fmt: skip
        finally:
            await rt.db.close()

    try:
        granted = asyncio.run(run())
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # an unknown workspace breaks the foreign key
        err.print(f"[red]error:[/] could not grant: {type(exc).__name__}")
        raise typer.Exit(1) from None
    out.print("granted" if granted else f"already granted with reference {reference}")


master_key_app = typer.Typer(help="The master key (operators).", no_args_is_help=True)
app.add_typer(master_key_app, name="master-key")


@master_key_app.command("generate")
def master_key_generate() -> None:
    """Print a new random master key (32 bytes, base64) for AUXEN_MASTER_KEY."""
    import base64
    import secrets

    print(base64.b64encode(secrets.token_bytes(32)).decode())


@master_key_app.command("rotate")
def master_key_rotate() -> None:
    """Re-seal every sealed secret under a new master key, in one transaction. The old
    key comes from AUXEN_MASTER_KEY and the new one from AUXEN_NEW_MASTER_KEY (keys are
    only ever read from the environment). Stop the servers first; start them again with
    AUXEN_MASTER_KEY set to the new key. Safe to run again if interrupted."""
    import os

    from auxen.auth.rotation import RotationError, rotate_master_key
    from auxen.config import check_master_key, decode_master_key
    from auxen.store.db import Database

    settings = Settings()
    try:
        if settings.master_key is None:
            raise ConfigError("set AUXEN_MASTER_KEY to the current master key")
        old = settings.master_key_bytes
        new_value = os.environ.get("AUXEN_NEW_MASTER_KEY", "")
        if not new_value:
            raise ConfigError("set AUXEN_NEW_MASTER_KEY to the new master key")
        new = check_master_key(decode_master_key(new_value, "AUXEN_NEW_MASTER_KEY"))
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None

    async def run() -> Any:
        db = Database(settings.resolved_database_url)
        try:
            await db.migrate()
            return await rotate_master_key(db, old, new)
        finally:
            await db.close()

    try:
        report = asyncio.run(run())
    except RotationError as exc:
        err.print(f"[red]not rotated:[/] {exc}")
        raise typer.Exit(1) from None
    for name, count in report.resealed.items():
        out.print(f"{name}: {count} re-sealed")
    if report.already_new:
        out.print(f"{report.already_new} value(s) were already sealed under the new key")
    out.print("done: start the servers with AUXEN_MASTER_KEY set to the new key")


incident_app = typer.Typer(
    help="Incidents on the public /status page (operators).", no_args_is_help=True
)
app.add_typer(incident_app, name="incident")


def _incident_op(op: Any) -> Any:
    """Run one incident operation on this server's database."""
    from auxen.store.db import Database

    async def run() -> Any:
        db = Database(Settings().resolved_database_url)
        try:
            await db.migrate()
            return await op(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except AuxenError as exc:
        where = f" ({exc.param})" if exc.param else ""
        err.print(f"[red]error{where}:[/] {exc.message}")
        raise typer.Exit(1) from None


@incident_app.command("post")
def incident_post(
    title: Annotated[str, typer.Option(help="What is affected, in a few words")],
    message: Annotated[str, typer.Option(help="The first update, shown on /status")],
    severity: Annotated[str, typer.Option(help="minor, major or critical")] = "minor",
    status: Annotated[
        str, typer.Option(help="investigating, identified, monitoring or resolved")
    ] = "investigating",
    security: Annotated[
        bool,
        typer.Option(
            "--security", help="A security incident: every workspace's owners are told too"
        ),
    ] = False,
) -> None:
    """Open an incident on the status page."""
    from auxen.tools.incidents import post_incident

    made = _incident_op(
        lambda db: post_incident(db, title=title, severity=severity, message=message,
                                 status=status, security=security)
    )  # fmt: skip
    told = " (every workspace is being told)" if security else ""
    out.print(f"incident [bold]{made.id}[/] {made.status}{told}")


@incident_app.command("update")
def incident_update(
    incident_id: str,
    message: Annotated[str, typer.Option(help="What changed")],
    status: Annotated[
        str, typer.Option(help="investigating, identified, monitoring or resolved")
    ] = "identified",
) -> None:
    """Add an update to an open incident."""
    from auxen.tools.incidents import update_incident

    done = _incident_op(lambda db: update_incident(db, incident_id, status=status, message=message))
    out.print(f"incident [bold]{done.id}[/] {done.status}")


@incident_app.command("resolve")
def incident_resolve(
    incident_id: str,
    message: Annotated[str, typer.Option(help="What was wrong, and that it is over")] = "Resolved.",
) -> None:
    """Close an incident."""
    from auxen.tools.incidents import update_incident

    done = _incident_op(
        lambda db: update_incident(db, incident_id, status="resolved", message=message)
    )
    out.print(f"incident [bold]{done.id}[/] resolved")


@incident_app.command("list")
def incident_list(as_json: JsonOpt = False) -> None:
    """Recent incidents, open ones first."""
    from auxen.tools.incidents import list_incidents

    rows = _incident_op(lambda db: list_incidents(db))
    _show(
        [
            {"id": r.incident.id, "status": r.incident.status, "severity": r.incident.severity,
             "title": r.incident.title, "created": str(r.incident.created_at)[:16],
             "updates": len(r.updates)}
            for r in rows
        ],
        as_json,
        {"id": "id", "status": "status", "severity": "severity", "title": "title",
         "created": "created", "updates": "updates"},
    )  # fmt: skip


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from auxen.store.db import Database

    settings = Settings()

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(run())
    out.print(f"database at {_redact(settings.resolved_database_url)} is up to date")


@app.command()
def reconcile() -> None:
    """One reconcile pass against this server's database and provider: terminate
    orphaned resources, fail instances whose resource vanished, finish interrupted
    destroys and bring-ups (waiting for them), close streams whose process died."""
    from auxen.runtime import Runtime

    settings = Settings()

    async def run() -> Any:
        rt = Runtime.build(settings)
        try:
            await rt.db.migrate()
            report = await rt.instances.reconcile()
            await rt.instances.settle()
            return report
        finally:
            await rt.close()

    try:
        report = asyncio.run(run())
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    if not report.leader:
        out.print("another process is reconciling right now; nothing done")
        return
    for label, items in (
        ("orphaned resources terminated", report.orphans_terminated),
        ("instances failed (resource gone)", report.failed),
        ("destroys finished", report.destroyed),
        ("bring-ups resumed", report.resumed),
    ):
        out.print(f"{label}: {len(items)}" + (f" ({', '.join(items)})" if items else ""))
    out.print(f"interrupted streams closed: {report.streams_interrupted}")


@app.command()
def hosts(
    ended: Annotated[bool, typer.Option("--ended", help="Also hosts already stopped")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Shared-small hosts (operators): the model each serves, its GPU, how many live
    instances use it, how long it has run and what its GPU has cost this deployment."""
    from auxen.billing.catalog import load_prices
    from auxen.inference.shared_hosts import host_costs
    from auxen.store.db import Database

    settings = Settings()

    async def run() -> Any:
        db = Database(settings.resolved_database_url)
        try:
            return await host_costs(db, load_prices(settings.prices_file), include_ended=ended)
        finally:
            await db.close()

    rows = [
        {"id": h.host_id, "model": h.model, "gpu_type": h.gpu_type, "state": h.state,
         "live_instances": h.live_instances, "running_s": round(h.running_s),
         "hourly_usd": f"{h.hourly_micros / 1e6:.2f}", "cost_usd": f"{h.cost_micros / 1e6:.6f}"}
        for h in asyncio.run(run())
    ]  # fmt: skip
    _show(
        rows,
        as_json,
        {"host": "id", "model": "model", "gpu": "gpu_type", "state": "state",
         "instances": "live_instances", "running s": "running_s", "$/h": "hourly_usd",
         "cost $": "cost_usd"},
    )  # fmt: skip


# -- instances ---------------------------------------------------------------------

TERMINAL = {"ready", "failed", "destroyed"}


@instances_app.command("provision")
def instances_provision(
    model: Annotated[str, typer.Option(help="Hugging Face id or model directory")],
    gpu_type: Annotated[str | None, typer.Option(help="GPU type")] = None,
    gpu_fallback: Annotated[
        list[str] | None, typer.Option(help="GPU type to try when gpu-type has no capacity")
    ] = None,
    tier: Annotated[str, typer.Option(help="dedicated")] = "dedicated",
    ttl: Annotated[int | None, typer.Option(help="Seconds before automatic destroy")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Safe-retry key")] = None,
    wait: Annotated[bool, typer.Option(help="Show progress until ready or failed")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Provision an instance; prints its auxk_ key once."""
    if model.startswith(".") or (not model.startswith("/") and Path(model).is_dir()):
        model = str(Path(model).resolve())
    body: dict[str, Any] = {"model": model, "tier": tier}
    if gpu_fallback:
        body["gpu_fallbacks"] = gpu_fallback
    for name, value in (("gpu_type", gpu_type), ("ttl", ttl), ("idempotency_key", idempotency_key)):
        if value is not None:
            body[name] = value
    made = _call("POST", "/v1/instances", json=body)
    key = made.get("instance_key")
    if not as_json:
        out.print(f"instance [bold]{made['id']}[/] {made['state']}")
        if key:
            out.print("instance key (shown once):")
            out.print(key, markup=False, highlight=False)
        out.print(f"OpenAI base_url: {made['endpoint']}", highlight=False)
    final = _follow(made["id"]) if wait else made
    if as_json:
        print(json.dumps({**final, "instance_key": key}, indent=2))
    if final["state"] == "failed":
        err.print(f"[red]failed:[/] {final.get('last_error')}")
        raise typer.Exit(1)


def _follow(instance_id: str) -> dict[str, Any]:
    started = time.monotonic()
    with err.status("") as status:
        while True:
            current: dict[str, Any] = _call("GET", f"/v1/instances/{instance_id}")
            elapsed = time.monotonic() - started
            detail = f" {current['status_detail']}" if current.get("status_detail") else ""
            status.update(f"{instance_id}: [bold]{current['state']}[/] ({elapsed:.0f}s){detail}")
            if current["state"] in TERMINAL:
                break
            time.sleep(1.0)
    colour = "green" if current["state"] == "ready" else "red"
    err.print(f"{instance_id}: [{colour}]{current['state']}[/] after {elapsed:.0f}s")
    return current


@instances_app.command("list")
def instances_list(
    state: Annotated[str | None, typer.Option(help="Only this state")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List instances."""
    data = _call("GET", "/v1/instances", params={"state": state} if state else None)["data"]
    _show(
        data,
        as_json,
        {
            "id": "id",
            "state": "state",
            "model": "model",
            "gpu": "gpu_type",
            "$/h": "hourly_price_usd",
            "created": "created_at",
            "expires": "expires_at",
        },
    )


@instances_app.command("get")
def instances_get(instance_id: str) -> None:
    """Show one instance as JSON."""
    print(json.dumps(_call("GET", f"/v1/instances/{instance_id}"), indent=2))


@instances_app.command("destroy")
def instances_destroy(instance_id: str) -> None:
    """Destroy an instance and everything it held."""
    done = _call("DELETE", f"/v1/instances/{instance_id}")
    out.print(f"instance [bold]{done['id']}[/] {done['state']}")


# -- keys --------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Label")] = "",
    instance: Annotated[str | None, typer.Option(help="Make an auxk_ key for it")] = None,
    test: Annotated[bool | None, typer.Option("--test/--live", help="Key mode")] = None,
) -> None:
    """Create an API key (printed once)."""
    body: dict[str, Any] = {"name": name}
    if instance:
        body["instance_id"] = instance
    if test is not None:
        body["livemode"] = not test
    made = _call("POST", "/v1/keys", json=body)
    out.print(f"key [bold]{made['id']}[/] ({made['kind']}) - shown once:")
    out.print(made["key"], markup=False, highlight=False)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List API keys (never their secrets)."""
    data = _call("GET", "/v1/keys")["data"]
    _show(
        data,
        as_json,
        {
            "id": "id",
            "kind": "kind",
            "prefix": "prefix",
            "name": "name",
            "instance": "instance_id",
            "acts as": "effective_role",
            "made by": "created_by",
            "status": "status",
            "created": "created_at",
            "last used": "last_used_at",
        },
        empty={"last_used_at": "never"},
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key."""
    done = _call("DELETE", f"/v1/keys/{key_id}")
    out.print(f"key [bold]{done['id']}[/] revoked at {done['revoked_at']}")


@app.command()
def usage(
    instance: Annotated[str | None, typer.Option(help="Only this instance")] = None,
) -> None:
    """Tokens, GPU time and cost."""
    params = {"instance_id": instance} if instance else None
    print(json.dumps(_call("GET", "/v1/usage", params=params), indent=2))


def _show(
    rows: list[dict[str, Any]],
    as_json: bool,
    columns: dict[str, str],
    empty: dict[str, str] | None = None,
) -> None:
    """Rows as JSON, or as a table of `columns` (header -> field); `empty` says what a
    missing value of a field means (e.g. a key never used)."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(
            *(
                str(row[field]) if row[field] is not None else (empty or {}).get(field, "")
                for field in columns.values()
            )
        )
    out.print(table)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    app()
