"""telefum-bridge service shell: settings, the ``telefum`` CLI and the HTTP side.

Wires ``telephony`` (the PBX side), ``crm_client`` (the CRM side) and ``worker`` (the
durable pipeline between them). Those three never import this package.

Where things are::

    config.py        settings.toml: typed sections, env overrides, the error lines
    service.py       Bridge: the parts of run / listen / worker wired and started in order
    cli.py           the ``telefum`` command: a table of subcommands
    commands/        one module per subcommand (run, listen, worker, replay, dlq, ...)
    web.py           the aiohttp app: /health, /metrics; other parts add their routes
    http_guard.py    the HTTP server's defences: Host allow-list, connection cap, timeouts
    limits.py        the caps' hits: counted for /metrics, logged at most once a minute
    agent_routes.py  agent pages, click-to-call, the report, and the tokens that guard them
    screenpop.py     what each agent page shows, live from the tracker's updates
    originate.py     click-to-call: what may be dialled, how often, the AMI Originate
    attribution.py   calls per tracking number and ad source (``telefum report``)
    health.py        pure: is the bridge fine? (/health, ``telefum status``)
    metrics.py       /metrics in Prometheus text format
    logs.py          one line per happening, tagged with the call, secrets masked and
                     control characters escaped
    checkcrm.py      ``telefum check-crm``: a CRM's TelefUM endpoint, point by point
    demo.py          ``telefum demo``: the whole chain on embedded defaults
    private_redis.py where the private Redis of ``telefum run`` lives
    progress.py      a progress bar on stderr
    static/          the agent and report pages (HTML, JS, CSS)
"""

__version__ = "0.1.0"
