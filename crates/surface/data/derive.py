#!/usr/bin/env python3
"""Derives Postern's subset of a RouterOS command database.

Input: `routeros-7.21.4.json.gz` from PyPI's routeros-lsp 0.2.3 (MIT; a dump of a real
RouterOS 7.21.4 CHR, x86_64, through /console/inspect), found in the installed package
or given as the first argument. Output: `routeros-7.21.4.json` next to this script:
the same format, keeping every global command and only the menus below (descriptions
dropped), so the file stays small. To check a command under another menu, add the
menu here and run the script again (`python3 derive.py`).
"""

import gzip
import json
import sys
from pathlib import Path

# Menus Postern uses or is expected to use on a router (space-separated paths).
MENUS = [
    "user",
    "ip address",
    "ip firewall",
    "ip service",
    "ip route",
    "ip dns",
    "interface wireguard",
    "interface list",
    "system",
    "tool fetch",
    "certificate",
    "file",
    "log",
]


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "d"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main() -> None:
    if len(sys.argv) > 1:
        source = Path(sys.argv[1])
    else:
        import routeros_lsp

        source = Path(routeros_lsp.__file__).parent / "data" / "routeros-7.21.4.json.gz"
    data = json.loads(gzip.decompress(source.read_bytes()))
    root = data["root"]
    out = {"c": {}}
    # Global commands (:do, :log, :local, /import …) are commands at the root.
    for name, node in root["c"].items():
        if node.get("k"):
            out["c"][name] = strip(node)
    for menu in MENUS:
        src, dst = root, out
        words = menu.split()
        for i, word in enumerate(words):
            src = src["c"][word]
            if i == len(words) - 1:
                dst["c"][word] = strip(src)
            else:
                # A menu on the way keeps its own commands (print, export …) too.
                kept = dst["c"].setdefault(word, {"c": {}})
                for name, node in src.get("c", {}).items():
                    if node.get("k"):
                        kept["c"][name] = strip(node)
                dst = kept
    derived = {k: v for k, v in data.items() if k != "root"}
    derived["derived"] = (
        "routeros-lsp 0.2.3 routeros_lsp/data/routeros-7.21.4.json.gz (MIT), "
        "descriptions dropped, menus: " + ", ".join(MENUS)
    )
    derived["root"] = out
    target = Path(__file__).with_name("routeros-7.21.4.json")
    target.write_text(json.dumps(derived, sort_keys=True, indent=0, separators=(",", ":")) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
