#!/usr/bin/env python3
"""Refuse any dependency whose licence does not allow a permissive choice.

Reads `cargo metadata` and evaluates each package's SPDX expression: a package passes
when some way of satisfying the expression uses only licences on the allow-list below
(`MIT OR GPL-2.0` passes through MIT; `MIT AND GPL-2.0` fails). A package with no
licence expression fails too, whatever its `license-file` says, so that a human reads
it and adds it to EXCEPTIONS with a reason. Run with --self-test to check the evaluator.
"""
import json
import re
import os
import subprocess
import sys

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib",
    "0BSD", "CC0-1.0", "Unlicense", "BSL-1.0", "Unicode-3.0", "Unicode-DFS-2016",
    "CDLA-Permissive-2.0",
    # University of Illinois/NCSA: BSD-like (libFuzzer, through libfuzzer-sys in fuzz/).
    "NCSA",
}
ALLOWED_EXCEPTIONS = {"LLVM-exception"}
# name -> reason, for packages whose licence is fine but not written as SPDX.
EXCEPTIONS = {}


def tokens(expr):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    expr = expr.replace("/", " OR ")
    return re.findall(r"\(|\)|[A-Za-z0-9.+\-]+", expr)


def parse(toks):
    """Returns a nested tuple tree: ('or', a, b), ('and', a, b), ('lic', id)."""
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary():
        t = take()
        if t == "(":
            node = disjunction()
            if take() != ")":
                raise ValueError("missing )")
            return node
        if t in ("AND", "OR", "WITH", ")", None):
            raise ValueError(f"unexpected {t}")
        node = ("lic", t)
        if peek() == "WITH":
            take()
            node = ("with", t, take())
        return node

    def conjunction():
        node = primary()
        while peek() in ("AND", "and"):
            take()
            node = ("and", node, primary())
        return node

    def disjunction():
        node = conjunction()
        while peek() in ("OR", "or"):
            take()
            node = ("or", node, conjunction())
        return node

    tree = disjunction()
    if pos != len(toks):
        raise ValueError(f"trailing {toks[pos:]}")
    return tree


def ok(node):
    kind = node[0]
    if kind == "lic":
        return node[1].rstrip("+") in ALLOWED
    if kind == "with":
        return node[1] in ALLOWED and node[2] in ALLOWED_EXCEPTIONS
    if kind == "and":
        return ok(node[1]) and ok(node[2])
    return ok(node[1]) or ok(node[2])


def acceptable(expr):
    try:
        return ok(parse(tokens(expr)))
    except (ValueError, IndexError):
        return False


def self_test():
    rows = [
        ("MIT", True), ("MIT OR Apache-2.0", True), ("MIT/Apache-2.0", True),
        ("Apache-2.0 AND ISC", True), ("(MIT OR Apache-2.0) AND Unicode-3.0", True),
        ("Apache-2.0 WITH LLVM-exception", True), ("MIT OR GPL-3.0-only", True),
        ("AGPL-3.0", False), ("AGPL-3.0-or-later", False), ("GPL-2.0", False),
        ("MIT AND GPL-2.0", False), ("LGPL-2.1-or-later", False), ("", False),
        ("MIT AND (GPL-2.0 OR AGPL-3.0)", False), ("(MIT", False),
        ("GPL-2.0 WITH Classpath-exception-2.0", False),
    ]
    bad = [(e, want) for e, want in rows if acceptable(e) != want]
    for e, want in bad:
        print(f"self-test: {e!r} should be {'accepted' if want else 'refused'}")
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed")
    return not bad


def main():
    if "--self-test" in sys.argv:
        return 0 if self_test() else 1
    # The workspace, and the fuzz crate outside it (its own Cargo.lock).
    manifests = [m for m in ("Cargo.toml", "fuzz/Cargo.toml") if os.path.exists(m)]
    failed = 0
    for manifest in manifests:
        meta = json.loads(subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--locked",
             "--manifest-path", manifest]))
        ours = set(meta["workspace_members"])
        refused = []
        for pkg in meta["packages"]:
            if pkg["id"] in ours:
                continue
            expr = pkg.get("license") or ""
            if pkg["name"] in EXCEPTIONS or acceptable(expr):
                continue
            refused.append(f"{pkg['name']} {pkg['version']}: {expr or 'no licence expression'}")
        for line in refused:
            print(f"licence refused: {line}")
        count = len(meta["packages"]) - len(ours)
        print(f"licences ({manifest}): {count - len(refused)} of {count} dependencies acceptable")
        failed = failed or bool(refused)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
