"""Everything that knows Asterisk: the AMI wire format and link, and the call tracker that
turns events into call records. A pure core (codec, tracker) inside a thin I/O shell (the
listener). The PBX simulator is a tool beside it, in ``pbxsim/``.

Where things are::

    ami.py            the wire: socket bytes -> whole AMI messages (decoded once), encode
    listener.py       the AMI link: login, keep-alive, reconnect + reconcile, Originate
    tracker.py        pure: AMI messages in, live updates and finished calls out; one
                      handler per event, looked up in a table
    tracker_state.py  what the tracker remembers per channel and call; build_record()
    records.py        what the tracker tells the world: CallRecord (the ``telefum replay``
                      contract, docs/architecture.md) and the live updates
    rules.py          CallRules: which channels are trunks, phones, inbound contexts
    phones.py         phone numbers: to E.164, and out in the CRM's format
    backoff.py        the one backoff of the bridge (reconnects, retries)
    supervise.py      the one supervisor of every background loop of the service

Never imports ``telefum``, ``crm_client`` or ``pbxsim``.
"""
