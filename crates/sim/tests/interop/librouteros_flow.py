#!/usr/bin/env python3
"""Drive a postern sim router with librouteros, a RouterOS API client written by others.

Usage: librouteros_flow.py HOST API_PORT API_TLS_PORT CERT_PEM_PATH ADMIN_PASSWORD

The flow (issue 2, point 4): log in, add a user, find it with a `?name=` query, read the
`!trap` of a duplicate add, remove it, check it is gone. Then the same login with the
legacy MD5 challenge (librouteros's `token` method) and over API-SSL with the sim's
certificate pinned. Exits non-zero, with a message, on the first mismatch.
"""

import ssl
import sys

import librouteros
from librouteros.exceptions import TrapError
from librouteros.login import plain, token
from librouteros.query import Key


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def flow(api, label):
    users = api.path("user")
    name = f"interop-{label}"
    new_id = users.add(name=name, group="read", password="Interop-pw-1", comment="postern:interop")
    check(new_id.startswith("*"), f"{label}: add returns an id, got {new_id!r}")

    found = list(users.select(Key(".id"), Key("name"), Key("group")).where(Key("name") == name))
    check(found == [{".id": new_id, "name": name, "group": "read"}], f"{label}: ?name= query, got {found!r}")

    # Raw query words, as a hand-written client would send them.
    raw = list(api.rawCmd("/user/print", f"?name={name}", "=.proplist=name,comment"))
    check(raw == [{"name": name, "comment": "postern:interop"}], f"{label}: raw ?name=, got {raw!r}")

    # librouteros's stack-operator helpers: != is `?#!`, In is `?#|`.
    others = [u["name"] for u in users.select(Key("name")).where(Key("name") != name)]
    check(name not in others and "admin" in others, f"{label}: != query, got {others!r}")
    either = sorted(u["name"] for u in users.select(Key("name")).where(Key("name").In(name, "admin")))
    check(either == sorted([name, "admin"]), f"{label}: In query, got {either!r}")

    try:
        users.add(name=name, group="read", password="x")
        check(False, f"{label}: a duplicate add must trap")
    except TrapError as e:
        check(
            e.message == "failure: user with the same name already exists",
            f"{label}: duplicate trap message, got {e.message!r}",
        )

    users.remove(new_id)
    gone = list(users.select(Key("name")).where(Key("name") == name))
    check(gone == [], f"{label}: user gone after remove, got {gone!r}")

    try:
        users.remove(new_id)
        check(False, f"{label}: removing a removed id must trap")
    except TrapError as e:
        check(e.message == "no such item", f"{label}: no such item, got {e.message!r}")

    identity = list(api("/system/identity/print"))
    check(len(identity) == 1 and "name" in identity[0], f"{label}: identity, got {identity!r}")


def main():
    host, port, tls_port, cert, password = sys.argv[1:6]

    api = librouteros.connect(host, "admin", password, port=int(port), login_method=plain)
    flow(api, "plain")
    api.close()

    api = librouteros.connect(host, "admin", password, port=int(port), login_method=token)
    flow(api, "md5")
    api.close()

    try:
        librouteros.connect(host, "admin", "wrong-password", port=int(port))
        check(False, "a wrong password must fail")
    except TrapError as e:
        check(e.message == "invalid user name or password (6)", f"wrong password, got {e.message!r}")

    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False  # the certificate names the router's address, not `host` text
    api = librouteros.connect(
        host,
        "admin",
        password,
        port=int(tls_port),
        ssl_wrapper=lambda sock: ctx.wrap_socket(sock, server_hostname=host),
    )
    flow(api, "tls")
    api.close()
    print("librouteros flow: OK")


if __name__ == "__main__":
    main()
