"""``telefum listen --config settings.toml``: the AMI listener and HTTP, no worker.

Finished calls go to the shared Redis (``[redis] url`` must be set), where any number of
``telefum worker`` processes deliver them.
"""

from __future__ import annotations

import argparse

from telefum.commands.run import add_arguments as add_arguments
from telefum.commands.run import serve
from telefum.service import Roles

HELP = "run the AMI listener and HTTP endpoints; `telefum worker` processes deliver the calls"


def run(args: argparse.Namespace) -> int:
    return serve(args, Roles(listen=True, work=False, http=True), "listen")
