"""A stand-in Asterisk for trying and testing the bridge: an AMI server that plays recorded
calls. A tool, not part of the bridge: ``telephony/``, ``crm_client/`` and ``worker/``
never import it; ``telefum simulate-pbx``, ``telefum demo``, the tests and ``bench/`` do.

Where things are::

    server.py    PbxSimulator: Login, Ping, Originate, Getvar, CoreShowChannels; plays
                 traces or a synthetic mix to every logged-in client, fast
    synth.py     a reproducible, realistic mix of calls made of the recorded ones
    rebase.py    one recording played many times: fresh ids, times and phone numbers
    traces/      real Asterisk recordings (raw AMI bytes), one call scenario each: 22 with
                 PJSIP, 20 with chan_sip (phones named by account); with most, the
                 arrival times (.timing.jsonl) and Asterisk's own CDR (.cdr.csv):
                 manifest.json  what the tracker must report for each (the tests' truth;
                                "pbx" says which Asterisk, "synthetic" marks hand-made)
                 templates.json which of them synth mixes, how often, with what facts
                 etc/           the Asterisk 22 configuration they were recorded on
                 etc-chansip/   the Asterisk 20 chan_sip one

The traces are package data, read through :func:`traces_dir` (``importlib.resources``),
so an installed wheel plays them as a checkout does. A call the bridge gets wrong on a
real PBX becomes a trace here, with its entry in ``manifest.json``.
"""

from importlib import resources
from importlib.resources.abc import Traversable


def traces_dir() -> Traversable:
    """The recorded traces shipped with the package (a folder in a checkout)."""
    return resources.files(__name__).joinpath("traces")
