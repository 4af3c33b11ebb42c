#!/usr/bin/env python3
"""Renders config/nginx/lensd-two-daemons.conf for two running lensd daemons.

    python3 config/nginx/render.py --listen 8080 \\
        --daemon a=127.0.0.1:8081 --daemon b=127.0.0.1:8082 \\
        --out /etc/nginx/conf.d/lensd.conf

fills @LISTEN@, @DAEMON_A@, @DAEMON_B@ and @MODEL_MAP@. The model map comes
from each daemon's GET /v1/models (with LENSD_TOKEN, a read token, as
`Authorization: Bearer` when the daemons have tokens files), or, for a daemon
that is not running yet, from --models a=NAME,NAME. A model name found on
both daemons is an error: the router could send it to only one of them.
Prints the model map to stderr. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "lensd-two-daemons.conf"
DAEMONS = ("a", "b")  # the template's two upstreams
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # lensd's model names (config/README.md)
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
LISTEN = re.compile(r"^((\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):)?[0-9]{1,5}$")


def pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        label, sep, rest = v.partition("=")
        if not sep or label not in DAEMONS:
            sys.exit(f"render.py: {what} {v!r}: expected a=... or b=...")
        if label in out:
            sys.exit(f"render.py: {what} {label} given twice")
        out[label] = rest
    return out


def models_of(address: str, token: str | None, timeout: float) -> list[str]:
    """The names in daemon address's GET /v1/models."""
    req = urllib.request.Request(f"http://{address}/v1/models", headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as e:
        sys.exit(f"render.py: GET http://{address}/v1/models: {e.code} {e.read()[:300]!r}"
                 + (" (set LENSD_TOKEN to a read token)" if e.code == 401 else ""))
    except (OSError, ValueError) as e:
        sys.exit(f"render.py: GET http://{address}/v1/models: {e}")
    return [m["name"] for m in doc["models"]]


def render(listen: str, addresses: dict[str, str], models: dict[str, list[str]]) -> str:
    if not LISTEN.match(listen):
        sys.exit(f"render.py: --listen {listen!r}: expected PORT or HOST:PORT")
    for label, address in addresses.items():
        if not ADDRESS.match(address):
            sys.exit(f"render.py: --daemon {label}={address!r}: expected HOST:PORT")
    holder: dict[str, str] = {}
    for label in DAEMONS:
        for name in models[label]:
            if not NAME.match(name):
                sys.exit(f"render.py: daemon {label}: {name!r} is not a lensd model name")
            if name in holder:
                sys.exit(f"render.py: model {name!r} is on daemon {holder[name]} and daemon {label}: "
                         "the router can send a name to one daemon only")
            holder[name] = label
    lines = [f"    {name:<40} {label};" for name, label in holder.items()] or \
            ["    # (no models)"]
    values = {"@LISTEN@": listen, "@DAEMON_A@": addresses["a"], "@DAEMON_B@": addresses["b"],
              "@MODEL_MAP@": "\n".join(lines)}
    out, seen = [], set()
    for line in TEMPLATE.read_text().splitlines(keepends=True):
        if not line.lstrip().startswith("#"):  # the comments keep naming the placeholders
            for key, value in values.items():
                if key in line:
                    seen.add(key)
                    line = line.replace(key, value)
        out.append(line)
    if seen != set(values):
        sys.exit(f"render.py: {TEMPLATE} lacks {sorted(set(values) - seen)}")
    return (f"# Rendered by config/nginx/render.py from {TEMPLATE.name}: change the template or\n"
            "# rerun render.py rather than editing this file.\n" + "".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="PORT or HOST:PORT for nginx's listen")
    ap.add_argument("--daemon", action="append", default=[], metavar="a|b=HOST:PORT", required=True,
                    help="a daemon's address (give a and b)")
    ap.add_argument("--models", action="append", default=[], metavar="a|b=NAME[,NAME...]",
                    help="a daemon's models, instead of asking its GET /v1/models")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds for each GET /v1/models")
    ap.add_argument("--out", help="write here instead of stdout")
    args = ap.parse_args()

    addresses = pairs(args.daemon, "--daemon")
    if set(addresses) != set(DAEMONS):
        sys.exit("render.py: give --daemon a=HOST:PORT and --daemon b=HOST:PORT")
    given = {k: [n for n in v.split(",") if n] for k, v in pairs(args.models, "--models").items()}
    token = os.environ.get("LENSD_TOKEN") or None
    models = {label: given[label] if label in given else models_of(addresses[label], token, args.timeout)
              for label in DAEMONS}
    text = render(args.listen, addresses, models)
    for label in DAEMONS:
        print(f"daemon {label} ({addresses[label]}): {', '.join(models[label]) or '(none)'}",
              file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
