"""``telefum check-crm URL --login L --password P``: does this CRM speak TelefUM?

Prints a table of the protocol's points with pass/FAIL and the reason; exit 0 only if all
pass, 1 if any fails, 2 on bad usage. It creates one clearly named test contact and one
event (see ``telefum.checkcrm``). The password may come from ``TELEFUM_CRM__PASSWORD``
instead of the command line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

from pydantic import SecretStr

from crm_client.redact import redact_url
from crm_client.types import Credentials

HELP = "check a CRM's TelefUM endpoint point by point (creates one test contact)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the CRM's /rest endpoint, e.g. https://crm.example.com/rest")
    parser.add_argument("--login", required=True)
    parser.add_argument("--password", default=os.environ.get("TELEFUM_CRM__PASSWORD"),
                        help="default: $TELEFUM_CRM__PASSWORD")
    parser.add_argument("--country", default="RU", help="country of the test phone numbers")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--skip-pages", action="store_true",
                        help="do not check /card and /search (for CRMs whose pages need a "
                             "browser login); skipped points do not fail the check")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from telefum.checkcrm import all_passed, check_crm, format_table

    if not args.password:
        print("telefum check-crm: --password (or TELEFUM_CRM__PASSWORD) is required",
              file=sys.stderr)
        return 2
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"telefum check-crm: not an http(s) URL: {redact_url(args.url)}", file=sys.stderr)
        return 2
    results = asyncio.run(
        check_crm(
            args.url,
            Credentials(args.login, SecretStr(args.password)),
            country=args.country,
            timeout_s=args.timeout,
            check_pages=not args.skip_pages,
        )
    )
    ok = all_passed(results, allow_skipped=args.skip_pages)
    if args.json:
        print(json.dumps(
            {"url": redact_url(args.url), "ok": ok,
             "points": [{"point": r.point, "result": r.status.lower(), "reason": r.reason}
                        for r in results]},
            ensure_ascii=False, indent=2,
        ))  # fmt: skip
    else:
        print(f"TelefUM conformance of {redact_url(args.url)} (login {args.login})\n")
        print(format_table(results))
    return 0 if ok else 1
