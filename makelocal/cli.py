"""The `makelocal` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from makelocal.cluster import SERVICE_KINDS
from makelocal.embedded import PortInUse
from makelocal.stack import Ports, default_data_dir, running_stack, up

SERVICES = {
    "registry": ("services.registry.app:main", "the registry service"),
    "registry-relay": ("services.registry.app:main_relay", "only the registry's outbox relay"),
    "matcher": ("services.matcher.app:main", "the matcher service"),
    "notifier": ("services.notifier.app:main", "the notifier service"),
    "web": ("services.web.app:main", "the web page for makers"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="makelocal", description=__doc__)
    parser.add_argument("--version", action="version", version=f"makelocal {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="run NATS, PostgreSQL and every service on this machine")
    _data_dir(p_up)
    defaults = Ports()
    for name, what in PORTS.items():
        attr = name.replace("-", "_")
        p_up.add_argument(f"--{name}-port", type=int, default=getattr(defaults, attr),
                          help=f"{what} (default: %(default)s)")
    p_up.add_argument("--prometheus", action="store_true",
                      help="also run Prometheus (deploy/prometheus rules) when it is installed")
    p_up.add_argument("--cluster", action="store_true",
                      help="production's topology: 3 clustered NATS nodes (the NATS port and "
                      "the next two), 2 registries, 2 matcher partitions and 2 notifiers (each "
                      "service port and the port 10 above it)")

    for name, (_, what) in SERVICES.items():
        sub.add_parser(name, help=f"run {what} alone (settings from MAKELOCAL_*)")
    p_sink = sub.add_parser("mail-sink", help="a local SMTP server keeping mail as .eml files")
    p_sink.add_argument("--dir", type=Path, required=True, help="where each email is kept")
    p_sink.add_argument("--host", default="127.0.0.1", help="address to listen on"
                        " (default: %(default)s)")
    p_sink.add_argument("--port", type=int, default=8025, help="(default: %(default)s)")

    p_org = sub.add_parser("org", help="organizations and their API keys")
    org_sub = p_org.add_subparsers(dest="org_command", required=True)
    p_create = org_sub.add_parser("create", help="create an organization; prints its API key once")
    p_create.add_argument("name", help="the organization's name")
    _data_dir(p_create)
    _data_dir(org_sub.add_parser("list", help="every organization, its id and live keys"))
    p_key = sub.add_parser("key", help="an organization's API keys: make, list, revoke")
    key_sub = p_key.add_subparsers(dest="key_command", required=True)
    for action, what, arg, arg_help in (
            ("create", "a new key for an organization; prints it once", "org_id",
             "the organization's id (makelocal org list)"),
            ("list", "an organization's keys by id, live or revoked", "org_id",
             "the organization's id"),
            ("revoke", "revoke a key: writes with it are refused at once", "key_id",
             "the key's id (the part between mlk_ and the secret; makelocal key list)")):
        p_action = key_sub.add_parser(action, help=what)
        p_action.add_argument(arg, help=arg_help)
        _data_dir(p_action)

    p_import = sub.add_parser("import", help="import OKH/OKW files and folders")
    p_import.add_argument("paths", nargs="+", type=Path, help="files or folders")
    p_import.add_argument("--registry-url", default=None, help="the registry (default: the"
                          " stack `up` runs with --data-dir, else MAKELOCAL_REGISTRY_URL or"
                          " http://127.0.0.1:8001)")
    p_import.add_argument("--api-key", default=os.environ.get("MAKELOCAL_API_KEY"),
                          help="the owning organization's key (or MAKELOCAL_API_KEY)")
    _data_dir(p_import)
    p_import.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_import.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                          help="read a CSV no known layout fits: which column holds which "
                          "field (repeat; e.g. --map 'Lab=name' --map Lat=lat). Fields: "
                          "name (required), id, lat, lon, coordinates, street, city, region, "
                          "postcode, country, status, access_type, processes, materials, "
                          "equipment_type, make, model, quantity, link, description, owner")

    p_validate = sub.add_parser("validate", help="read OKH/OKW files as an import would and "
                                "report what would be stored, the warnings and what was "
                                "inferred; no key, no server; exit 1 on any error")
    p_validate.add_argument("paths", nargs="+", type=Path, help="files or folders")
    p_validate.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                            help="as for import: which CSV column is which field")
    p_validate.add_argument("--json", action="store_true", help="print the reports as JSON")

    p_status = sub.add_parser("status", help="health, lag, backlog and deliveries of the "
                              "running stack, as a table")
    _data_dir(p_status)

    p_trace = sub.add_parser("trace", help="follow one registry change (its event id) to its "
                             "match events and deliveries")
    p_trace.add_argument("event_id", help="the event_id a registry write answered with")
    _data_dir(p_trace)

    p_schema = sub.add_parser("schema", help="write the JSON Schemas of models and events")
    p_schema.add_argument("--out", type=Path, default=None, help="the folder to write them"
                          " to (default: contracts/schemas)")

    args = parser.parse_args(argv)
    if args.command == "up":
        ports = Ports(args.nats_port, args.nats_monitor_port, args.postgres_port,
                      args.registry_port, args.matcher_port, args.notifier_port,
                      web=args.web_port, smtp=args.smtp_port, prometheus=args.prometheus_port,
                      nats_routes=args.nats_routes_port)
        try:
            return up(args.data_dir or default_data_dir(), ports,
                      with_prometheus=args.prometheus, cluster=args.cluster)
        except PortInUse as exc:
            print(f"makelocal: {exc}", file=sys.stderr)
            return 2
    if args.command in SERVICES:
        module, _, function = SERVICES[args.command][0].partition(":")
        getattr(importlib.import_module(module), function)()
        return 0
    if args.command == "mail-sink":
        from makelocal.mailsink import serve

        serve(args.dir, args.host, args.port)
        return 0
    if args.command in ("org", "key"):
        return asyncio.run(_admin(args))
    try:
        if args.command == "import":
            return _import(args)
        if args.command == "validate":
            return _validate(args)
    except _UsageError:
        return 2
    if args.command == "status":
        from makelocal.status import status

        stack = running_stack(args.data_dir or default_data_dir())
        # every instance `up` started, else one of each where the environment says
        urls = stack.get("services") or {
            service: stack.get(f"{service}_url", f"http://127.0.0.1:{getattr(Ports(), service)}")
            for service in SERVICE_KINDS}
        table, healthy = status(urls)
        print(table)
        return 0 if healthy else 1
    if args.command == "trace":
        from makelocal.trace import run
        from services.common.settings import CommonSettings

        data_dir = args.data_dir or default_data_dir()
        stack, settings = running_stack(data_dir), CommonSettings()
        _admin_credentials(data_dir)
        return run(stack.get("database_url", settings.database_url),
                   stack.get("nats_url", settings.nats_url), args.event_id)
    if args.command == "schema":
        from contracts.schemas import SCHEMA_DIR, write_schemas

        for path in write_schemas(args.out or SCHEMA_DIR):
            print(path)
        return 0
    return 2


def _admin_credentials(data_dir: Path) -> None:
    """Unless MAKELOCAL_NATS_USER says who: read NATS as the admin user of the stack `up`
    runs with this data directory (its passwords are kept there)."""
    from makelocal import nats_auth

    kept = data_dir / nats_auth.CREDENTIALS_FILE
    if not os.environ.get("MAKELOCAL_NATS_USER") and kept.exists():
        os.environ.update(MAKELOCAL_NATS_USER=nats_auth.ADMIN,
                          MAKELOCAL_NATS_PASSWORD=nats_auth.generated(data_dir)[nats_auth.ADMIN])


async def _org_create(name: str, data_dir: Path) -> int:
    from makelocal.stack import create_organization
    from services.registry.settings import RegistrySettings

    dsn = running_stack(data_dir).get("database_url", RegistrySettings().database_url)
    org_id, key = await create_organization(dsn, name)
    print(f"organization {org_id} ({name})")
    print(f"API key (shown once, store it now): {key}")
    return 0


PORTS = {"nats": "NATS clients' port", "nats-monitor": "NATS monitoring port",
         "postgres": "PostgreSQL's port", "registry": "the registry API's port",
         "matcher": "the matcher API's port", "notifier": "the notifier API's port",
         "web": "the web page's port", "smtp": "the SMTP sink's port",
         "prometheus": "Prometheus's port (with --prometheus)",
         "nats-routes": "the first NATS node's cluster port (with --cluster)"}


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help="where `up` keeps the data"
                        f" and its state (default: $MAKELOCAL_DATA_DIR or {default_data_dir()})")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("makelocal")
    except PackageNotFoundError:
        return "unknown (not installed)"


async def _admin(args: argparse.Namespace) -> int:
    from makelocal import admin

    data_dir = args.data_dir or default_data_dir()
    if args.command == "org":
        if args.org_command == "list":
            return await admin.org_list(data_dir)
        return await _org_create(args.name, data_dir)
    action = {"create": admin.key_create, "list": admin.key_list,
              "revoke": admin.key_revoke}[args.key_command]
    return await action(getattr(args, "org_id", None) or args.key_id, data_dir)


class _UsageError(Exception):
    """Told to the user already; the command exits 2."""


def _mapping(args: argparse.Namespace) -> dict[str, str] | None:
    """--map pairs, or _UsageError after naming what is wrong with them."""
    from contracts.errors import InvalidInput
    from contracts.readers.mapped import parse_mapping

    try:
        return parse_mapping(args.map) or None
    except InvalidInput as exc:
        print(f"makelocal: {exc.message}", file=sys.stderr)
        raise _UsageError from None


def _validate(args: argparse.Namespace) -> int:
    from makelocal.validate import render, validate

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"makelocal: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    results, errors = validate(args.paths, _mapping(args))
    print(render(results, as_json=args.json))
    return 1 if errors else 0


def _import(args: argparse.Namespace) -> int:
    from makelocal.importer import import_paths

    mapping = _mapping(args)
    if not args.api_key:
        print("makelocal: an API key is needed: --api-key or MAKELOCAL_API_KEY", file=sys.stderr)
        return 2
    url = args.registry_url or running_stack(args.data_dir or default_data_dir()).get(
        "registry_url", "http://127.0.0.1:8001")
    summary = asyncio.run(import_paths(args.paths, registry_url=url, api_key=args.api_key,
                                       progress=not args.no_progress, mapping=mapping))
    c = summary.counts
    print(f"created {c['created']}, updated {c['updated']}, unchanged {c['unchanged']}, "
          f"rejected {c['rejected']}")
    for where, reason in summary.rejected:
        print(f"  rejected {where}: {reason}")
    if summary.warnings:
        print(f"{len(summary.warnings)} warnings (first 10):")
        for where, warning in summary.warnings[:10]:
            print(f"  {where}: {warning}")
    return 1 if c["rejected"] else 0  # scripts must see that something was not imported


if __name__ == "__main__":
    sys.exit(main())
