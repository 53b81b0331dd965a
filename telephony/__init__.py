"""Everything that knows Asterisk: the AMI wire format and link, and the call tracker that
turns events into call records. A pure core (codec, tracker) inside a thin I/O shell (the
listener). The PBX simulator is a tool beside it, in ``pbxsim/``.

Where things are::

    ami.py            the wire: socket bytes -> whole AMI messages (decoded once), encode
    listener.py       the AMI link: login, keep-alive, reconnect + reconcile, Originate
    backfill.py       beside the listener: reads the PBX's CDR at start and after every gap
                      in the link; submits the calls the stream did not show end
    cdr.py            pure: CDR rows -> the same CallRecord (source "cdr")
    cdr_sources.py    reading the CDR of a time window: cdr_csv.py (Master.csv),
                      cdr_sql.py (MySQL/MariaDB, PostgreSQL); cdr_settings.py says which
    tracker.py        pure: AMI messages in, live updates and finished calls out; one
                      handler per event, looked up in a table
    tracker_state.py  what the tracker remembers per channel and call; build_record()
    explain.py        why a record says what it says (``telefum replay --explain``)
    pbxclock.py       the PBX's clock offset, from Timestamps against arrival (pure)
    records.py        what the tracker tells the world: CallRecord (the ``telefum replay``
                      contract, docs/architecture.md) and the live updates
    rules.py          CallRules ([calls]): which channels are trunks, phones (also named by
                      account), inbound contexts; what an extension looks like
    phones.py         phone numbers: to E.164, and out in the CRM's format
    backoff.py        the one backoff of the bridge (reconnects, retries)
    supervise.py      the one supervisor of every background loop of the service

Never imports ``telefum``, ``crm_client`` or ``pbxsim``.
"""
