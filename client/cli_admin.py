"""`xaiq keys` and `xaiq tenants`: tenants' keys and limits (with the admin key)."""
from __future__ import annotations

import time

from client.cli_common import CliError, client_of, show_json, with_server


def cmd_keys(args) -> int:
    if (args.action == "create") != bool(args.tenant) or (args.action == "revoke") != bool(args.id):
        raise CliError("keys create needs --tenant; keys revoke needs the key's id (see `xaiq keys list`)")
    client = client_of(args)
    if args.action == "create":
        made = client.create_key(args.tenant, args.name or "")
        print(f"key for tenant {made['tenant']} (id {made['id']}); it is shown only now:\n{made['key']}")
    elif args.action == "list":
        made = client.keys()
        for k in made:
            print(f"{k['id']}  {k['tenant']:20} {time.strftime('%Y-%m-%d %H:%M', time.localtime(k['created']))}  {k['name']}")
    else:
        print(f"revoked {client.revoke_key(args.id)['revoked']}")
    return 0


LIMITS = (("max-job-gflop", float, "the most one job may cost, in GFLOP"),
          ("max-tenant-gflop", float, "the most the tenant's queued and running work may cost, in GFLOP"),
          ("max-tenant-units", int, "the most work units the tenant may have queued and running"),
          ("max-tenant-jobs", int, "the most unfinished jobs the tenant may have"))


def cmd_tenants(args) -> int:
    client = client_of(args)
    limits = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name, _, _ in LIMITS}
    limits = {k: v for k, v in limits.items() if v is not None}
    show_json(client.set_limits(args.tenant, **limits) if limits else client.tenant(args.tenant))
    return 0


def add_admin_commands(sub) -> None:
    sp = with_server(sub.add_parser("keys", help="tenants' API keys (with the admin key)"))
    sp.add_argument("action", choices=["create", "list", "revoke"], help="create, list or revoke a key")
    sp.add_argument("id", nargs="?", help="revoke: the key's id (see list)")
    sp.add_argument("--tenant", help="create: the tenant the key belongs to")
    sp.add_argument("--name", help="create: a note, e.g. who uses the key")
    sp.set_defaults(fn=cmd_keys)
    sp = with_server(sub.add_parser("tenants", help="a tenant's limits and usage; set limits (admin key)"))
    sp.add_argument("tenant", help="the tenant's name")
    for name, kind, hlp in LIMITS:
        sp.add_argument(f"--{name}", type=kind, help=hlp)
    sp.set_defaults(fn=cmd_tenants)
