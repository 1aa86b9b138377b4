"""Who may do what on NATS: one user per service, each allowed only the subjects it needs.
The one source of the rules: `makelocal up` (one node or `--cluster`) renders the server
configuration from it, and tests/unit/test_deploy.py checks deploy/ (compose's nats/auth.conf,
the Helm values) against it.

Who creates streams: each service declares (creates or updates) the streams it writes or
declares today, and nothing else: the registry REGISTRY, the matcher MATCHES and its
checkpoint buckets, the notifier MATCHES too (it may start before the matcher; both declare
the same configuration). No service may delete a stream. Consumers: the matcher any on
REGISTRY (its durables, and the ephemeral ordered consumers that read the stream whole),
the notifier only its durable on MATCHES. Replies come on `_INBOX.>`, the one subject
anyone subscribes to. The `admin` user (operators' tools: `makelocal trace`, readiness
checks) has every permission and no service uses it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contracts.events import REGISTRY_STREAM
from contracts.matches import MATCHES_STREAM

SERVICE_USERS = ("registry", "matcher", "notifier")
ADMIN = "admin"
USERS = (*SERVICE_USERS, ADMIN)
# the `makelocal` command each service process runs -> the user it connects as
COMMAND_USER = {"registry": "registry", "registry-relay": "registry", "matcher": "matcher",
                "notifier": "notifier"}
CREDENTIALS_FILE = "nats-auth.json"
API = "$JS.API"
INBOX = "_INBOX.>"


@dataclass(frozen=True)
class Grants:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = (INBOX,)


@dataclass(frozen=True)
class EnvRef:
    """A password the server reads from its environment (`$NAME` in its configuration),
    for deployments whose passwords live in a secret store, not in files."""

    name: str


def password_variable(user: str) -> str:
    """The variable holding `user`'s password for the NATS server in deploy/."""
    return f"NATS_{user.upper()}_PASSWORD"


def _declare(stream: str) -> list[str]:
    return [f"{API}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE", "INFO")]


def _consume(stream: str, consumer: str) -> list[str]:
    """Create, look up, pull from and acknowledge `consumer` on `stream` ("*": any name;
    a filtered create names its filter after the consumer, hence `.>`)."""
    any_name = consumer == "*"
    return [
        *([f"{API}.CONSUMER.CREATE.{stream}"] if any_name else []),  # unnamed (ordered)
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        *(f"{API}.CONSUMER.{op}.{stream}.{consumer}" for op in ("INFO", "DELETE", "MSG.NEXT")),
        f"$JS.ACK.{stream}.{'>' if any_name else consumer + '.>'}",
        f"$JS.FC.{stream}.>",  # flow control of push (ordered) consumers
    ]


def _read_whole(stream: str) -> list[str]:
    """Read `stream` through unnamed ordered consumers only: nothing to pull from, ack
    for or delete another's durable with."""
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.STREAM.INFO.{stream}",
            f"$JS.FC.{stream}.>"]


def _bucket(stream: str, subjects: str) -> list[str]:
    """A KV bucket's or object store's stream: declared, written, read back, purged."""
    return [*_declare(stream), f"{API}.STREAM.PURGE.{stream}", f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>", subjects,
            *_consume(stream, "*")]


def grants(partitions: int = 1, matcher_bucket: str = "matcher",
           notifier_durable: str = "notifier") -> dict[str, Grants]:
    """Each service user's permissions (the settings name the matcher's buckets and the
    notifier's durable; the defaults are the services' defaults)."""
    matcher: list[str] = ["matches.>", *_declare(MATCHES_STREAM),
                          # an object store read finds its stream by subject (names only)
                          f"{API}.STREAM.NAMES",
                          f"{API}.STREAM.INFO.{REGISTRY_STREAM}",
                          *_consume(REGISTRY_STREAM, "*"),
                          # after a crash mid-batch, the pieces already in MATCHES are
                          # looked up there, not published twice
                          *_read_whole(MATCHES_STREAM)]
    for partition in range(partitions):
        bucket = f"{matcher_bucket}-p{partition}"  # MatcherSettings.bucket
        matcher += _bucket(f"KV_{bucket}", f"$KV.{bucket}.>")
        matcher += _bucket(f"OBJ_{bucket}-snap", f"$O.{bucket}-snap.>")
    return {
        "registry": Grants(("registry.>", *_declare(REGISTRY_STREAM))),
        "matcher": Grants(tuple(matcher)),
        "notifier": Grants((*_declare(MATCHES_STREAM),
                            *_consume(MATCHES_STREAM, notifier_durable))),
    }


def grant_settings(env: Mapping[str, str]) -> dict[str, object]:
    """grants()'s arguments from the services' environment (what they will read)."""
    return {"partitions": int(env.get("MAKELOCAL_PARTITIONS") or 1),
            "matcher_bucket": env.get("MAKELOCAL_MATCHER_BUCKET") or "matcher",
            "notifier_durable": env.get("MAKELOCAL_NOTIFIER_DURABLE") or "notifier"}


def users(passwords: Mapping[str, str | EnvRef], **settings: object) -> list[dict]:
    """The server's `authorization.users`: every service user with its grants, and the
    admin with all (`settings` as for grants())."""
    rules = grants(**settings)  # type: ignore[arg-type]
    out: list[dict] = []
    for user in USERS:
        entry: dict = {"user": user, "password": passwords[user]}
        if user in rules:
            entry["permissions"] = {"publish": {"allow": list(rules[user].publish)},
                                    "subscribe": {"allow": list(rules[user].subscribe)}}
        out.append(entry)
    return out


def _render(value: object, indent: str = "") -> str:
    """NATS configuration syntax (JSON, but for `$NAME`: a variable from the environment),
    one item a line, so that a change to the rules reads as a small diff."""
    inner = indent + "  "
    if isinstance(value, EnvRef):
        return f"${value.name}"
    if isinstance(value, dict):
        items = [f"{inner}{key}: {_render(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list):
        return "[\n" + ",\n".join(inner + _render(item, inner) for item in value) \
            + f"\n{indent}]"
    return json.dumps(value)


def server_config(passwords: Mapping[str, str | EnvRef], **settings: object) -> str:
    """The `authorization` block of a nats-server configuration file."""
    return ("# generated by makelocal.nats_auth (python -m makelocal.nats_auth): do not edit\n"
            f"authorization {_render({'users': users(passwords, **settings)})}\n")


def deploy_passwords() -> dict[str, EnvRef]:
    return {user: EnvRef(password_variable(user)) for user in USERS}


def generated(data_dir: Path) -> dict[str, str]:
    """Every user's password, made on the first start and kept (owner read-only) in the
    data directory, as the notifier's key is: restarts keep them."""
    path = data_dir / CREDENTIALS_FILE
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if set(USERS) - set(known):
        known = {user: known.get(user) or secrets.token_urlsafe(24) for user in USERS}
        path.touch(mode=0o600)
        path.write_text(json.dumps(known))
    return known


def service_env(command: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """The credentials of the user a `makelocal <command>` process connects as (none for
    a command that does not use NATS, or without `passwords`: a NATS that needs none)."""
    user = COMMAND_USER.get(command)
    if user is None or not passwords:
        return {}
    return {"MAKELOCAL_NATS_USER": user, "MAKELOCAL_NATS_PASSWORD": passwords[user]}


def secret_key(user: str) -> str:
    """The key of `user`'s password in the Kubernetes Secret `makelocal`."""
    return f"nats-{user}-password"


def helm_users(partitions: int) -> list[dict]:
    """`authorization.users` for the NATS Helm chart's config.merge: each password read
    from the container's environment (`<< $NAME >>` is written unquoted by the chart)."""
    return users({user: f"<< ${password_variable(user)} >>" for user in USERS},
                 partitions=partitions)


def main(argv: list[str] | None = None) -> None:
    """Print deploy/nats/auth.conf (compose) or, with --helm, the Helm values' users."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m makelocal.nats_auth")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--helm", action="store_true")
    args = parser.parse_args(argv)
    if args.helm:
        print(yaml.safe_dump({"users": helm_users(args.partitions)}, sort_keys=False), end="")
    else:
        print(server_config(deploy_passwords(), partitions=args.partitions), end="")


if __name__ == "__main__":
    main()
