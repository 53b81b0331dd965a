"""``python -m worker --redis-url URL --config-json FILE``: one worker process, no settings.toml.

For tests and for running workers from another supervisor; ``telefum worker --config F`` is
the same thing built from ``settings.toml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from crm_client.redact import redact_line, register_secrets

from .app import run_worker
from .keys import ArqLineTags
from .policy import WorkerConfig
from .redis_url import RedisAddress


class _Formatter(logging.Formatter):
    """Text lines with the call they are about (``call_id=...``) appended; the whole line,
    traceback included, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = [f"{k}={getattr(record, k)}" for k in ("call_id", "pbx") if hasattr(record, k)]
        return redact_line(f"{line} {' '.join(tags)}" if tags else line)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--config-json", required=True, help="a WorkerConfig as JSON (to_json)")
    p.add_argument("--worker-id", default=None)
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ArqLineTags())
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("arq.worker").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        with open(args.config_json, encoding="utf-8") as f:
            config = WorkerConfig.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"worker: bad --config-json {args.config_json}: {err}", file=sys.stderr)
        return 2
    register_secrets(config.secret_values())
    register_secrets([RedisAddress.parse(args.redis_url).password or ""])
    return run_worker(config, args.redis_url, worker_id=args.worker_id, burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
