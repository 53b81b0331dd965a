#!/usr/bin/env python3
"""analyze.py MANIFEST_DIR CRM_SQLITE: the burst's truth (record.py's
manifest.json of scenario 28) against what the reference CRM holds.

Prints, per call: events in the CRM (must be 1), the CRM's "Длительность" vs the CDR's
billsec (the answering row) and vs the event-measured talk; then the totals as JSON."""

import json
import re
import sqlite3
import sys
from pathlib import Path

mdir, db = sys.argv[1], sys.argv[2]
manifest = json.loads(Path(mdir, "manifest.json").read_text())
(burst,) = [s for s in manifest["scenarios"] if s["file"].startswith("28-")]
con = sqlite3.connect(db)
rows = con.execute(
    'SELECT p.key, e."desc", e.subj FROM events e JOIN phones p ON p.contact_id = e.contact_id'
).fetchall()
by_phone = {}
for key, desc, subj in rows:
    by_phone.setdefault(key, []).append((desc, subj))
once = missing = dup = 0
worst_cdr = worst_events = 0.0
bounded = []
lines = []
for call in burst["calls"]:
    phone = "+" + call["external_number"]
    got = by_phone.get(phone, [])
    if not got:
        missing += 1
    elif len(got) > 1:
        dup += 1
    else:
        once += 1
    billsec = max((int(r["BillableSeconds"]) for r in call["cdr_records"]), default=0)
    note = ""
    for desc, _ in got[:1]:
        m = re.search(r"Длительность ([≥≤]?)(\d+):(\d\d)", desc)
        if m:
            shown = int(m.group(2)) * 60 + int(m.group(3))
            d_cdr = shown - billsec
            d_ev = shown - float(call.get("talk_seconds_events") or 0)
            worst_cdr = max(worst_cdr, abs(d_cdr))
            worst_events = max(worst_events, abs(d_ev))
            if m.group(1):
                bounded.append(phone)
            events = call.get("talk_seconds_events")
            note = f"talk {m.group(1)}{shown}s cdr {billsec}s (d {d_cdr:+d}) events {events}s"
        elif call["answered"]:
            note = "ANSWERED BUT NO DURATION"
    lines.append(f"{phone} events={len(got)} answered={call['answered']} {note}")
print("\n".join(lines))
summary = {
    "calls": len(burst["calls"]),
    "once": once,
    "missing": missing,
    "duplicated": dup,
    "events_total": len(rows),
    "max_abs_talk_vs_cdr_billsec_s": worst_cdr,
    "max_abs_talk_vs_events_s": round(worst_events, 2),
    "bounded_durations": bounded,
}
print(json.dumps(summary, ensure_ascii=False))
