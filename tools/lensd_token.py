#!/usr/bin/env python3
"""Makes a new access token for lensd serve.

    python3 tools/lensd_token.py NAME [read|admin]

Prints two lines on stdout: the token (give it to the caller, who sends it as
"Authorization: Bearer <token>"; it is not stored anywhere) and the entry to
add to the tokens file's JSON list, which holds only the token's SHA-256:

    {"name": "alice", "role": "read", "sha256": "<64 hex digits>"}

The role defaults to read. Only the Python standard library is used.
"""
import hashlib
import json
import secrets
import sys


def main(argv):
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name = argv[1]
    role = argv[2] if len(argv) == 3 else "read"
    if not name:
        print("lensd_token: NAME must not be empty", file=sys.stderr)
        return 2
    if role not in ("read", "admin"):
        print(f'lensd_token: role must be "read" or "admin", not "{role}"', file=sys.stderr)
        return 2
    # 32 random bytes as URL-safe base64: 43 characters, all of them allowed
    # in a Bearer header (RFC 6750's b64token).
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode("ascii")).hexdigest()
    print(token)
    print(json.dumps({"name": name, "role": role, "sha256": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
