"""The `makelocal` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from makelocal.cluster import SERVICE_KINDS
from makelocal.embedded import LOCAL_INSTALL, PortInUse, missing_local_packages
from makelocal.stack import Ports, default_data_dir, running_stack, up

SERVICES = {
    "registry": ("services.registry.app:main", "the registry service"),
    "registry-relay": ("services.registry.app:main_relay", "only the registry's outbox relay"),
    "matcher": ("services.matcher.app:main", "the matcher service"),
    "notifier": ("services.notifier.app:main", "the notifier service"),
    "web": ("services.web.app:main", "the web page for makers"),
}

# they run NATS, PostgreSQL or the SMTP sink from the `local` extra, which production lacks
LOCAL_COMMANDS = ("up", "mail-sink")


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
        p_service = sub.add_parser(name, help=f"run {what} alone (settings from MAKELOCAL_*)")
        if name == "notifier":
            _notifier_actions(p_service)
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
                              "running stack, as a table; exit 1 unless every service is ready")
    p_status.add_argument("--json", action="store_true", help="print them as JSON, one object"
                          " per service, for scripts")
    _data_dir(p_status)

    p_trace = sub.add_parser("trace", help="follow one registry change (its event id) to its "
                             "match events and deliveries")
    p_trace.add_argument("event_id", help="the event_id a registry write answered with")
    _data_dir(p_trace)

    p_schema = sub.add_parser("schema", help="write the JSON Schemas of models and events")
    p_schema.add_argument("--out", type=Path, default=None, help="the folder to write them"
                          " to (default: contracts/schemas)")

    args = parser.parse_args(argv)
    if args.command in LOCAL_COMMANDS and (missing := missing_local_packages()):
        print(f"makelocal: {args.command} needs the `local` extra, which this install lacks"
              f" (missing: {', '.join(missing)}): {LOCAL_INSTALL}", file=sys.stderr)
        return 2
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
    if args.command == "notifier" and args.action:
        return asyncio.run(_notifier_key(args.action, args.data_dir or default_data_dir()))
    if args.command == "notifier" and args.data_dir:
        parser.error("--data-dir goes with rotate-key or reseal")
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
        from makelocal.status import as_json, draw, status

        stack = running_stack(args.data_dir or default_data_dir())
        # every instance `up` started, else one of each where the environment says
        urls = stack.get("services") or {
            service: stack.get(f"{service}_url", f"http://127.0.0.1:{getattr(Ports(), service)}")
            for service in SERVICE_KINDS}
        found = status(urls)
        if args.json:
            print(as_json(found))
        else:
            draw(found)
        return 0 if all(s.ready for s in found) else 1
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


PORTS = {"nats": "NATS clients' port", "nats-monitor": "NATS monitoring port",
         "postgres": "PostgreSQL's port", "registry": "the registry API's port",
         "matcher": "the matcher API's port", "notifier": "the notifier API's port",
         "web": "the web page's port", "smtp": "the SMTP sink's port",
         "prometheus": "Prometheus's port (with --prometheus)",
         "nats-routes": "the first NATS node's cluster port (with --cluster)"}


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help="where `up` keeps the data"
                        f" and its state (default: $MAKELOCAL_DATA_DIR or {default_data_dir()})")


NOTIFIER_KEY_HELP = """\
actions on the key sealing webhook secrets at rest (without one: run the service):

rotate-key  with the stack's data directory: make a new key, re-seal every stored webhook
            secret under it in one transaction (each opened with whichever key sealed it),
            then keep the new key in <data>/notifier.key and the old one in
            <data>/notifier.old-keys, where `makelocal up` reads both. Restart the stack
            right after: a notifier started before the rotation still seals with the old key
            and does not know the new one, so until it is restarted its webhook attempts fail
            (recorded and retried on the schedule, not lost). A restarted notifier seals with
            the new key and still opens the old one's secrets (those its predecessor made
            meanwhile); run `reseal` once after the restart to move them too, and then
            <data>/notifier.old-keys may be deleted. A rotation cut short is finished by
            running it again.
reseal      re-seal every stored webhook secret under the current key (idempotent): the
            environment's MAKELOCAL_NOTIFIER_SECRET_KEY and MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS
            if set, else the data directory's keys.

Without a data directory (keys in the environment): set MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS
to the old key and MAKELOCAL_NOTIFIER_SECRET_KEY to a new one (base64 of 32 random bytes),
restart every notifier, run `makelocal notifier reseal` with the same environment, then
remove the old key from MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS and restart again."""


def _notifier_actions(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = NOTIFIER_KEY_HELP
    parser.add_argument("action", nargs="?", choices=("rotate-key", "reseal"),
                        help="rotate-key or reseal (see above); none: run the service")
    _data_dir(parser)


async def _notifier_key(action: str, data_dir: Path) -> int:
    """`makelocal notifier rotate-key|reseal`: see NOTIFIER_KEY_HELP."""
    from makelocal import stack
    from services.common import db
    from services.notifier.sealing import Keyring, key_id, new_key, parse_key, parse_keys
    from services.notifier.settings import NotifierSettings
    from services.notifier.store import Store

    settings = NotifierSettings()
    from_env = bool(os.environ.get("MAKELOCAL_NOTIFIER_SECRET_KEY"))
    key_file = data_dir / stack.NOTIFIER_KEY_FILE
    next_file = data_dir / stack.NOTIFIER_NEXT_KEY_FILE
    if action == "rotate-key" and from_env:
        print("makelocal: MAKELOCAL_NOTIFIER_SECRET_KEY is set, so the key is the "
              "environment's, not the data directory's: rotate it as `makelocal notifier "
              "--help` tells (old key in MAKELOCAL_NOTIFIER_OLD_SECRET_KEYS, restart, reseal)",
              file=sys.stderr)
        return 2
    if not from_env and not key_file.exists():
        print(f"makelocal: no key in {key_file} and no MAKELOCAL_NOTIFIER_SECRET_KEY: nothing"
              " is sealed under a key yet (`makelocal up` makes one on its first start)",
              file=sys.stderr)
        return 2
    current = upcoming = ""
    olds: list[str] = []
    try:
        if from_env:
            keyring = settings.keyring
        else:
            current = stack.notifier_key(data_dir)
            olds = [k for k in stack.notifier_old_keys(data_dir) if k != current]
            if action == "rotate-key":
                # a rotation cut short left its next key: finish with that one
                upcoming = next_file.read_text().strip() if next_file.exists() else ""
                if not upcoming or upcoming == current:  # (or cut short once it was done)
                    upcoming = new_key()
                    stack.write_secret_file(next_file, upcoming)
                olds = [k for k in olds if k != upcoming]
                keyring = Keyring(parse_key(upcoming), (parse_key(current),
                                                        *parse_keys(",".join(olds))))
            else:
                keyring = Keyring(parse_key(current), parse_keys(",".join(olds)))
    except ValueError as exc:  # a bad key: the message names no key
        print(f"makelocal: {exc}", file=sys.stderr)
        return 2
    dsn = stack.running_stack(data_dir).get("database_url", settings.database_url)
    await db.migrate(dsn, settings.notifier_db_schema, "services.notifier")
    pool = await db.create_pool(dsn, settings.notifier_db_schema, min_size=1, max_size=1)
    try:
        changed, total = await Store(pool, settings.notifier_keys_schema).reseal_secrets(
            keyring.reseal)
    except ValueError as exc:  # ResealFailed: a key id at most, never a secret
        print(f"makelocal: nothing was re-sealed: {exc}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    assert keyring.current is not None  # a key from the environment or the data directory
    print(f"re-sealed the secrets of {changed} of {total} webhook subscription(s) under key"
          f" {key_id(keyring.current)}")
    if action == "rotate-key":
        # every key stays in some file at every step: the old key joins the old ones before
        # the new one replaces it
        stack.write_secret_file(data_dir / stack.NOTIFIER_OLD_KEYS_FILE,
                                "".join(f"{k}\n" for k in dict.fromkeys([current, *olds])))
        stack.write_secret_file(key_file, upcoming)
        next_file.unlink(missing_ok=True)
        print(f"the new key is in {key_file}; the old one ({key_id(parse_key(current))}) is"
              f" kept in {data_dir / stack.NOTIFIER_OLD_KEYS_FILE}. Restart the stack now"
              " (running notifiers cannot open secrets sealed under the new key), then run"
              " `makelocal notifier reseal` once.")
    return 0


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
        return await admin.org_create(args.name, data_dir)
    action = {"create": admin.key_create, "list": admin.key_list,
              "revoke": admin.key_revoke}[args.key_command]
    return await action(getattr(args, "org_id", None) or args.key_id, data_dir)


class _UsageError(Exception):
    """Told to the user already; the command exits 2."""


def _mapping(args: argparse.Namespace) -> dict[str, str] | None:
    """--map pairs, or _UsageError after naming what is wrong with them."""
    from contracts.errors import InvalidInput
    from ingest.mapped import parse_mapping

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
