"""``telefum check-crm URL --login L --password P``: does this CRM speak TelefUM?

Prints a table of the protocol's points, each pass, FAIL or not verified (the protocol asks
it but check-crm could not see it: a page behind a sign-in or drawn by scripts, what no
request reads back), with the reason; exit 0 unless a point fails, 1 if one does, 2 on bad
usage. ``--strict`` adds the checks beyond the protocol, for CRMs that render their pages on
the server. It creates one clearly named test contact and one event (see
``telefum.checkcrm``). The password may come from ``TELEFUM_CRM__PASSWORD`` instead of the
command line (where ``ps`` would show it); it is never printed, even when the CRM echoes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

from pydantic import SecretStr

from crm_client.redact import mask_values, redact_url
from crm_client.types import Credentials

HELP = "check a CRM's TelefUM endpoint point by point (creates one test contact)"
LEGEND = (
    "not verified: the protocol asks it, but check-crm could not see it (the reason says "
    "why): check it by hand; it does not fail the check"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the CRM's /rest endpoint, e.g. https://crm.example.com/rest")
    parser.add_argument("--login", required=True)
    parser.add_argument(
        "--password",
        default=os.environ.get("TELEFUM_CRM__PASSWORD"),
        help="default: $TELEFUM_CRM__PASSWORD",
    )
    parser.add_argument("--country", default="RU", help="country of the test phone numbers")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also check what the protocol does not ask (the card lists the "
        "call and the source, the search page links the card, find in "
        "other phone formats), and fail a page that does not show what "
        "it should: for CRMs whose pages are rendered on the server",
    )
    parser.add_argument(
        "--hide-login",
        action="store_true",
        help="the login is a secret too (an API key): never print it",
    )
    parser.add_argument(
        "--skip-pages",
        action="store_true",
        help="do not request /card and /search at all (kept for older scripts: "
        "a page behind a sign-in is now reported 'not verified' anyway)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from telefum.checkcrm import all_passed, check_crm, format_table
    from telefum.checkcrm_points import POINTS

    if not args.password:
        print(
            "telefum check-crm: --password (or TELEFUM_CRM__PASSWORD) is required", file=sys.stderr
        )
        return 2
    secrets = [args.password, *([args.login] if args.hide_login else [])]
    url = mask_values(redact_url(args.url), secrets)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"telefum check-crm: not an http(s) URL: {url}", file=sys.stderr)
        return 2
    results = asyncio.run(
        check_crm(
            args.url,
            Credentials(args.login, SecretStr(args.password)),
            country=args.country,
            timeout_s=args.timeout,
            strict=args.strict,
            hide_login=args.hide_login,
            skip_pages=args.skip_pages,
        )
    )
    ok = all_passed(results)
    if args.json:
        print(
            json.dumps(
                {
                    "url": url,
                    "ok": ok,
                    "strict": args.strict,
                    "points": [
                        {
                            "point": r.point,
                            "spec": POINTS[r.point].spec,
                            "result": r.status.lower(),
                            "reason": r.reason,
                        }
                        for r in results
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        login = "hidden" if args.hide_login else mask_values(args.login, secrets)
        mode = ", --strict" if args.strict else ""
        print(f"TelefUM conformance of {url} (login {login}{mode})\n")
        print(format_table(results))
        print(LEGEND)
    return 0 if ok else 1
