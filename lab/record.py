#!/usr/bin/env python3
"""Record raw AMI event streams from a real Asterisk for a set of call scenarios.

Everything runs on loopback only:
  * Asterisk: AMI on 127.0.0.1:5038, PJSIP/UDP on 127.0.0.1:5060
  * the "carrier" (external callers / called parties) is sipp on 127.0.0.2
  * internal phones 101..105 are sipp instances on 127.0.0.1:5161..5165

For every scenario a fresh AMI connection (the recorder) is opened; every byte it
receives (banner, login response, all events; CRLF kept) is written verbatim to
NN-name.ami.  A second AMI connection (the driver, Events: off) sets per-DID
routing, issues BlindTransfer / Atxfer / Originate, and polls CoreShowChannels
to know when a scenario is over.  Calls themselves are real SIP calls made by
sipp (sip-tester), so Asterisk sees real PJSIP channels.

Usage:  python3 record.py OUTDIR [scenario-prefix ...]
Only the Python standard library and the `sipp` binary are needed.
"""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

AMI_HOST, AMI_PORT = "127.0.0.1", 5038
AMI_USER, AMI_SECRET = "crm", "crmsecret"
ASTERISK = ("127.0.0.1", 5060)
CARRIER_IP = "127.0.0.2"
CARRIER_UAS_PORT = 5070          # Asterisk's trunk AOR points here
PHONE_IP = "127.0.0.1"
PHONE_PORT = {e: 5160 + int(e) - 100 for e in ("101", "102", "103", "104", "105")}

WORK = os.environ.get("SIPP_WORK", "RUN_DIR/sipp")

# lab additions -------------------------------------------------------------
# Master.csv of cdr_csv (cdr.conf [csv]); truncated before and copied after every
# scenario to OUTDIR/NN-name.cdr.csv.  Default: the asterisk.sh run folder.
CDR_CSV = os.environ.get("CDR_CSV") or os.path.join(
    os.environ.get("LIVE_RUN_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                   "telefum-live"),
    "asterisk", "var", "log", "cdr-csv", "Master.csv")
CDR_CSV_COLUMNS = ["accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel",
                   "lastapp", "lastdata", "start", "answer", "end", "duration", "billsec",
                   "disposition", "amaflags", "uniqueid", "userfield", "peeraccount",
                   "linkedid", "sequence"]
# LAB_PROFILE=chansip: Asterisk 20 with chan_sip, phones are SIP peers named by account
# (150010001..150010005 = extensions 201..205, sipp on 127.0.0.1:5161..5165)
PROFILE = os.environ.get("LAB_PROFILE", "pjsip")
TECH = "SIP" if PROFILE == "chansip" else "PJSIP"
DEVICE = {e: e for e in ("101", "102", "103", "104", "105")}      # extension -> SIP user/peer
if PROFILE == "chansip":
    for i in range(1, 6):
        DEVICE["20%d" % i] = "15001000%d" % i
        PHONE_PORT["20%d" % i] = 5160 + i
DEVICE_EXT = {v: k for k, v in DEVICE.items()}

# --------------------------------------------------------------------------
# sipp scenario building blocks
# --------------------------------------------------------------------------
SDP = """v=0
o=- 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv"""

UAC_INVITE = """  <send retrans="500">
    <![CDATA[
INVITE sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[field1]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:[field0]@[local_ip]:[local_port]>
Max-Forwards: 70
User-Agent: %(ua)s
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS
Content-Type: application/sdp
Content-Length: [len]

""" + SDP + """
    ]]>
  </send>
"""

UAC_ACK2XX = """  <send>
    <![CDATA[
ACK sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:[field0]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""

UAC_BYE = """  <send retrans="500">
    <![CDATA[
BYE sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:[field0]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

UAC_NON2XX_ACK = """  <send>
    <![CDATA[
ACK sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""

UAC_CANCEL = """  <send>
    <![CDATA[
CANCEL sip:[field1]@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
From: <sip:[field0]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[field1]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" optional="true" next="c200"/>
  <recv response="487" next="c487"/>
  <label id="c200"/>
  <recv response="487"/>
""" + UAC_NON2XX_ACK + """  <nop next="cdone"/>
  <label id="c487"/>
""" + UAC_NON2XX_ACK + """  <recv response="200" timeout="3000" ontimeout="cdone"/>
  <label id="cdone"/>
"""

UAC_WAIT_BYE = """  <recv request="BYE"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
"""


def uac_xml(kind, talk_ms=0, cancel_ms=0, ua="CarrierGW"):
    """Linear caller scenarios. kind: hangup | wait_bye | cancel | reject."""
    body = UAC_INVITE % {"ua": ua}
    body += '  <recv response="100" optional="true"/>\n'
    if kind == "cancel":
        # wait for the 180 (mandatory) then give up after cancel_ms
        body += '  <recv response="180"/>\n'
        body += '  <pause milliseconds="%d"/>\n' % cancel_ms
        body += UAC_CANCEL
    elif kind == "reject":
        body += '  <recv response="180" optional="true"/>\n'
        body += '  <recv response="486" optional="true" next="ack"/>\n'
        body += '  <recv response="503" optional="true" next="ack"/>\n'
        body += '  <recv response="480" optional="true" next="ack"/>\n'
        body += '  <recv response="603"/>\n'
        body += '  <label id="ack"/>\n' + UAC_NON2XX_ACK
    else:
        body += '  <recv response="180" optional="true"/>\n'
        body += '  <recv response="183" optional="true"/>\n'
        body += '  <recv response="200" rtd="true"/>\n'
        body += UAC_ACK2XX
        if kind == "hangup":
            body += '  <pause milliseconds="%d"/>\n' % talk_ms
            body += UAC_BYE
        elif kind == "wait_bye":
            body += UAC_WAIT_BYE
        else:
            raise ValueError(kind)
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
            '<scenario name="uac-%s">\n%s</scenario>\n' % (kind, body))


UAS_EREG_BYE = """      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote_from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="local_to"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="remote_contact"/>
"""
UAS_EREG_CSEQ = """      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="inv_cseq"/>
"""

UAS_RECV_INVITE = """  <recv request="INVITE" crlf="true">
    <action>
%s    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
"""

UAS_RESP = """  <send>
    <![CDATA[
SIP/2.0 %(code)s
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
"""

UAS_200 = """  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port]>
User-Agent: %(ua)s
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS
Content-Type: application/sdp
Content-Length: [len]

""" + SDP + """
    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
"""

UAS_BYE = """  <send retrans="500">
    <![CDATA[
BYE [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: 101 BYE
Contact: <sip:[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

UAS_CANCELLED = """  <recv request="CANCEL"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$inv_cseq] INVITE
Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
"""


def uas_xml(kind, ring_ms=0, talk_ms=0, code="486 Busy Here", ua="Yealink SIP-T46S 66.86.0.15"):
    """Phone / called-party scenarios.
    kind: answer_wait_bye | answer_then_bye | ring_forever | reject"""
    ereg = {"answer_then_bye": UAS_EREG_BYE, "ring_forever": UAS_EREG_CSEQ}.get(kind, "")
    body = UAS_RECV_INVITE % ereg
    if not ereg:
        body = body.replace("    <action>\n    </action>\n", "")
    if kind == "reject":
        body += UAS_RESP % {"code": code}
        body += '  <recv request="ACK"/>\n'
    else:
        body += UAS_RESP % {"code": "180 Ringing"}
        if kind == "ring_forever":
            body += UAS_CANCELLED
        else:
            body += '  <pause milliseconds="%d"/>\n' % ring_ms
            body += UAS_200 % {"ua": ua}
            if kind == "answer_wait_bye":
                body += UAC_WAIT_BYE
            elif kind == "answer_then_bye":
                body += '  <pause milliseconds="%d"/>\n' % talk_ms
                body += UAS_BYE
            else:
                raise ValueError(kind)
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
            '<scenario name="uas-%s">\n%s</scenario>\n' % (kind, body))



# --------------------------------------------------------------------------
# lab additions: more sipp building blocks (scenarios 20..29 and the chan_sip set)
# --------------------------------------------------------------------------
def _pause(spec):
    """pause element: an int (ms) or a (min, max) tuple -> uniform distribution."""
    if isinstance(spec, (tuple, list)):
        return '  <pause distribution="uniform" min="%d" max="%d"/>\n' % tuple(spec)
    return '  <pause milliseconds="%d"/>\n' % spec


def _wrap(name, body, head=""):
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
            '<scenario name="%s">\n%s%s</scenario>\n' % (name, head, body))


def uac_any_xml(after_answer="wait_bye", talk=0, ua="CarrierGW", extra_hdr=""):
    """Caller that accepts whatever the PBX does: any number of 100/180/183, then either
    200 (ACK; then wait for BYE, or talk and BYE) or a final 4xx/5xx/6xx (ACK)."""
    inv = UAC_INVITE % {"ua": ua}
    if extra_hdr:
        inv = inv.replace("Max-Forwards: 70\n", "Max-Forwards: 70\n" + extra_hdr + "\n", 1)
    body = inv + '  <label id="prov"/>\n'
    for code in ("100", "180", "183"):
        body += '  <recv response="%s" optional="true" next="prov"/>\n' % code
    for code in ("403", "404", "480", "486", "487", "488", "500", "503", "603"):
        body += '  <recv response="%s" optional="true" next="nonok"/>\n' % code
    body += '  <recv response="200" rtd="true"/>\n' + UAC_ACK2XX
    if after_answer == "hangup":
        body += _pause(talk) + UAC_BYE
    else:
        body += UAC_WAIT_BYE
    body += '  <nop next="end"/>\n  <label id="nonok"/>\n' + UAC_NON2XX_ACK
    body += '  <label id="end"/>\n'
    return _wrap("uac-any-%s" % after_answer, body)


def uac_dist_xml(kind, talk=0, cancel=0, ua="CarrierGW"):
    """Like uac_xml but talk / cancel may be (min, max) ms (uniform distribution)."""
    body = UAC_INVITE % {"ua": ua}
    body += '  <recv response="100" optional="true"/>\n'
    if kind == "cancel":
        body += '  <recv response="180"/>\n' + _pause(cancel) + UAC_CANCEL
    else:
        body += '  <recv response="180" optional="true"/>\n'
        body += '  <recv response="183" optional="true"/>\n'
        body += '  <recv response="200" rtd="true"/>\n' + UAC_ACK2XX
        body += _pause(talk) + UAC_BYE
    return _wrap("uac-dist-%s" % kind, body)


def uas_dist_xml(kind, ring=0, talk=0, ua="Yealink SIP-T46S 66.86.0.15"):
    """Phone that answers after `ring` and waits for BYE (answer_wait_bye) or hangs up
    after `talk` (answer_then_bye); ring/talk may be (min, max)."""
    ereg = UAS_EREG_BYE if kind == "answer_then_bye" else ""
    body = UAS_RECV_INVITE % ereg
    if not ereg:
        body = body.replace("    <action>\n    </action>\n", "")
    body += UAS_RESP % {"code": "180 Ringing"} + _pause(ring) + UAS_200 % {"ua": ua}
    if kind == "answer_wait_bye":
        body += UAC_WAIT_BYE
    else:
        body += _pause(talk) + UAS_BYE
    return _wrap("uas-dist-%s" % kind, body)


def uas_ring_capture_xml(capture_file, totag):
    """Phone that rings forever (until CANCEL) and writes the dialog identifiers of the
    PBX's INVITE (Call-ID, the PBX's From tag, our To tag) to capture_file, so another
    phone can send INVITE/Replaces for this early dialog."""
    body = """  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="inv_cseq"/>
      <ereg regexp="[^ ]+" search_in="hdr" header="Call-ID:" assign_to="cid"/>
      <ereg regexp="tag=([^;>]+)" search_in="hdr" header="From:" assign_to="ftagall,ftag"/>
      <exec command="echo '[$cid] [$ftag] %(totag)s' > %(file)s"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
""" % {"totag": totag, "file": capture_file}
    body += (UAS_RESP % {"code": "180 Ringing"}).replace("[pid]SIPpTag01[call_number]", totag)
    body += UAS_CANCELLED.replace("[pid]SIPpTag01[call_number]", totag)
    return _wrap("uas-ring-capture", body + '  <Reference variables="ftagall"/>\n')


def uac_replaces_xml(talk_ms, ua="Yealink SIP-T46S 66.86.0.15"):
    """Phone sending INVITE with Replaces: [field2];to-tag=[field3];from-tag=[field4]
    (RFC 3891: to-tag = the PBX's (recipient's) tag, from-tag = the ringing phone's tag),
    then talk_ms and BYE."""
    inv = (UAC_INVITE % {"ua": ua}).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nSupported: replaces\n"
        "Replaces: [field2];to-tag=[field3];from-tag=[field4]\n", 1)
    body = inv + '  <recv response="100" optional="true"/>\n'
    body += '  <recv response="180" optional="true"/>\n  <recv response="183" optional="true"/>\n'
    body += '  <recv response="200" rtd="true"/>\n' + UAC_ACK2XX + _pause(talk_ms) + UAC_BYE
    return _wrap("uac-replaces", body)


INFO_DTMF = """  <send retrans="500">
    <![CDATA[
INFO [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: 102 INFO
Contact: <sip:[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=%(digit)s
Duration=250
    ]]>
  </send>
  <recv response="200"/>
"""


def uas_answer_dtmf_xml(ring_ms, dtmf_after_ms, digit="1", ua="CarrierGW"):
    """Called party (e.g. the mobile behind the trunk) that answers, then after
    dtmf_after_ms sends DTMF `digit` as SIP INFO (application/dtmf-relay) and waits
    for BYE."""
    body = UAS_RECV_INVITE % UAS_EREG_BYE
    body += UAS_RESP % {"code": "180 Ringing"} + _pause(ring_ms) + UAS_200 % {"ua": ua}
    body += _pause(dtmf_after_ms) + INFO_DTMF % {"digit": digit} + UAC_WAIT_BYE
    return _wrap("uas-answer-dtmf", body)


SDP_HOLD = SDP.replace("a=sendrecv", "a=sendonly").replace("2353687637", "2353687638")


def uas_two_calls_join_xml(second_from, ring_ms, hold_ms, refer_ms, ua="Yealink SIP-T46S 66.86.0.15"):
    """Phone 101 receiving two calls on one sipp (-m 2). Call from a From not matching
    `second_from` (call 1): answer after ring_ms, after hold_ms put it on hold (re-INVITE
    sendonly), after refer_ms more send REFER with Refer-To <...?Replaces=call 2's dialog>
    (attended transfer of call 1 to call 2, as a desk phone's 'transfer' key does), then
    answer NOTIFYs and the PBX's BYE. Call 2 (From matches second_from): answer after
    ring_ms, publish its dialog ids in sipp globals, wait for BYE."""
    head = '  <Global variables="c2cid,c2ftag"/>\n'
    body = """  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="remote_from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="local_to"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="remote_contact"/>
      <ereg regexp="[^ ]+" search_in="hdr" header="Call-ID:" assign_to="mycid"/>
      <ereg regexp="tag=([^;>]+)" search_in="hdr" header="From:" assign_to="ftagall,myftag"/>
      <ereg regexp="%(second)s" search_in="hdr" header="From:" check_it="false" assign_to="is2"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <nop next="second" test="is2"/>
""" % {"second": second_from}
    t1, t2 = "ph101a", "ph101b"
    # ---- call 1 ----
    body += (UAS_RESP % {"code": "180 Ringing"}).replace("[pid]SIPpTag01[call_number]", t1)
    body += _pause(ring_ms)
    body += (UAS_200 % {"ua": ua}).replace("[pid]SIPpTag01[call_number]", t1)
    body += _pause(hold_ms)
    body += """  <send retrans="500">
    <![CDATA[
INVITE [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=%(t1)s
To: [$remote_from]
Call-ID: [call_id]
CSeq: 101 INVITE
Contact: <sip:101@[local_ip]:[local_port]>
Max-Forwards: 70
User-Agent: %(ua)s
Content-Type: application/sdp
Content-Length: [len]

%(sdp)s
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
ACK [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=%(t1)s
To: [$remote_from]
Call-ID: [call_id]
CSeq: 101 ACK
Contact: <sip:101@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
""" % {"t1": t1, "ua": ua, "sdp": SDP_HOLD}
    body += _pause(refer_ms)
    body += """  <send retrans="500">
    <![CDATA[
REFER [$remote_contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=%(t1)s
To: [$remote_from]
Call-ID: [call_id]
CSeq: 102 REFER
Contact: <sip:101@[local_ip]:[local_port]>
Max-Forwards: 70
User-Agent: %(ua)s
Refer-To: <sip:101@[remote_ip]:[remote_port]?Replaces=[$c2cid]%%3Bto-tag%%3D[$c2ftag]%%3Bfrom-tag%%3D%(t2)s>
Referred-By: <sip:101@[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
  <recv response="202"/>
  <recv request="NOTIFY" optional="true" next="na"/>
  <recv request="BYE" next="bye1"/>
  <label id="na"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <recv request="NOTIFY" optional="true" next="nb"/>
  <recv request="BYE" next="bye1"/>
  <label id="nb"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <recv request="NOTIFY" optional="true" next="nc"/>
  <recv request="BYE" next="bye1"/>
  <label id="nc"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <recv request="BYE"/>
  <label id="bye1"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <nop next="end"/>
""" % {"t1": t1, "t2": t2, "ua": ua}
    # ---- call 2 ----
    body += '  <label id="second"/>\n'
    body += (UAS_RESP % {"code": "180 Ringing"}).replace("[pid]SIPpTag01[call_number]", t2)
    body += _pause(ring_ms)
    body += (UAS_200 % {"ua": ua}).replace("[pid]SIPpTag01[call_number]", t2)
    body += """  <nop>
    <action>
      <assignstr assign_to="c2cid" value="[$mycid]"/>
      <assignstr assign_to="c2ftag" value="[$myftag]"/>
    </action>
  </nop>
"""
    body += UAC_WAIT_BYE
    body += '  <label id="end"/>\n  <Reference variables="ftagall"/>\n'
    return _wrap("uas-two-calls-join", body, head)



ACTIVE = []   # sipp processes created for the current scenario


class Sipp:
    """One sipp process (UAC or UAS)."""
    seq = 0

    def __init__(self, name, xml, ip, port, calls=1, rate=None, inject=None, mport=None):
        Sipp.seq += 1
        ACTIVE.append(self)
        self.name = name
        base = os.path.join(WORK, "%02d-%s" % (Sipp.seq, name))
        self.xmlfile = base + ".xml"
        with open(self.xmlfile, "w") as f:
            f.write(xml)
        self.args = ["sipp", "%s:%d" % ASTERISK, "-sf", self.xmlfile, "-i", ip,
                     "-p", str(port), "-m", str(calls), "-nostdin", "-timeout", "120s",
                     "-mi", ip, "-mp", str(mport or (30000 + (port - 5000) * 4)),
                     "-trace_err", "-error_file", base + ".err",
                     "-trace_msg", "-message_file", base + ".msg"]
        if inject:
            inf = base + ".csv"
            with open(inf, "w") as f:
                f.write("SEQUENTIAL\n")
                for row in inject:
                    f.write(";".join(row) + ";\n")
            self.args += ["-inf", inf]
        if rate:
            self.args += ["-r", str(rate), "-rp", "1000", "-l", str(calls)]
        self.log = base + ".log"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        return self

    async def wait(self, timeout=120):
        t0 = time.time()
        while self.proc.poll() is None and time.time() - t0 < timeout:
            await asyncio.sleep(0.2)
        return self.proc.poll()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # by its own pid
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------
# AMI
# --------------------------------------------------------------------------
class Recorder:
    """Logs in and writes every received byte, untouched, to a file."""

    def __init__(self, path):
        self.path = path
        self.buf = bytearray()
        # sidecar: when each chunk arrived (seconds since connect), so that a
        # replayer can reproduce the real timing of the stream
        self.timing_path = re.sub(r"\.ami$", "", path) + ".timing.jsonl"

    async def start(self):
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.reader, self.writer = await asyncio.open_connection(AMI_HOST, AMI_PORT)
        self.out = open(self.path, "wb")
        self.tout = open(self.timing_path, "w")
        self.task = asyncio.create_task(self._pump())
        self.writer.write(("Action: Login\r\nActionID: rec-login\r\nUsername: %s\r\n"
                           "Secret: %s\r\n\r\n" % (AMI_USER, AMI_SECRET)).encode())
        await self.writer.drain()

    async def _pump(self):
        while True:
            data = await self.reader.read(65536)
            if not data:
                break
            self.tout.write(json.dumps({"offset": len(self.buf), "len": len(data),
                                        "t": round(time.monotonic() - self.t0, 6),
                                        "wallclock": round(time.time(), 6)}) + "\n")
            self.out.write(data)
            self.out.flush()
            self.buf += data

    async def stop(self):
        self.writer.close()
        try:
            await asyncio.wait_for(self.task, 3)
        except (asyncio.TimeoutError, Exception):
            self.task.cancel()
        self.out.close()
        self.tout.close()


class Driver:
    """AMI action connection (Events: off)."""

    def __init__(self):
        self.n = 0

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(AMI_HOST, AMI_PORT)
        await self.reader.readline()  # banner
        r = await self.action("Login", Username=AMI_USER, Secret=AMI_SECRET, Events="off")
        assert r[0].get("Response") == "Success", r

    async def _read_msg(self):
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("AMI closed")
            line = line.decode(errors="replace").rstrip("\r\n")
            if line == "":
                if lines:
                    break
                continue
            lines.append(line)
        d = {}
        for l in lines:
            k, _, v = l.partition(":")
            d.setdefault(k.strip(), v.strip())
        return d

    async def action(self, name, **kw):
        """Send an action, return [response, *list events] for this ActionID."""
        self.n += 1
        aid = "drv-%d" % self.n
        msg = "Action: %s\r\nActionID: %s\r\n" % (name, aid)
        for k, v in kw.items():
            if isinstance(v, (list, tuple)):
                for x in v:
                    msg += "%s: %s\r\n" % (k, x)
            else:
                msg += "%s: %s\r\n" % (k, v)
        self.writer.write((msg + "\r\n").encode())
        await self.writer.drain()
        out = []
        while True:
            d = await self._read_msg()
            if d.get("ActionID") != aid:
                continue
            out.append(d)
            if "Response" in d and d.get("EventList") != "start":
                return out
            if d.get("EventList") == "Complete":
                return out

    async def channels(self):
        r = await self.action("CoreShowChannels")
        return [d for d in r if d.get("Event") == "CoreShowChannel"]

    async def find_channel(self, prefix, timeout=10):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for c in await self.channels():
                if c["Channel"].startswith(prefix) and c.get("ChannelStateDesc") == "Up":
                    return c["Channel"]
            await asyncio.sleep(0.2)
        raise RuntimeError("channel %s not found" % prefix)

    async def wait_idle(self, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if not await self.channels():
                return True
            await asyncio.sleep(0.5)
        return False

    async def set_route(self, did, route):
        await self.action("Setvar", Variable="ROUTE_%s" % did, Value=route)


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------
DID1, DID2, DID3 = "74951234567", "74951234568", "74951234569"
DID_BURST_A, DID_BURST_B = "74951234570", "74951234571"

_carrier_port = [5071]


def caller(number, did, kind, talk_ms=0, cancel_ms=0, calls=1, rate=None, inject=None):
    port = _carrier_port[0]
    _carrier_port[0] += 1
    return Sipp("uac-%s" % kind, uac_xml(kind, talk_ms, cancel_ms), CARRIER_IP, port,
                calls=calls, rate=rate, inject=inject or [(number, did)])


def phone_uac(ext, number, kind, talk_ms=0, cancel_ms=0):
    return Sipp("phone%s-uac-%s" % (ext, kind),
                uac_xml(kind, talk_ms, cancel_ms, ua="Yealink SIP-T46S 66.86.0.15"),
                PHONE_IP, PHONE_PORT[ext], inject=[(DEVICE[ext], number)])


def phone(ext, kind, ring_ms=0, talk_ms=0, calls=1, code="486 Busy Here"):
    return Sipp("phone%s-uas-%s" % (ext, kind), uas_xml(kind, ring_ms, talk_ms, code),
                PHONE_IP, PHONE_PORT[ext], calls=calls)


def carrier_uas(kind, ring_ms=0, talk_ms=0):
    return Sipp("carrier-uas-%s" % kind, uas_xml(kind, ring_ms, talk_ms, ua="CarrierGW"),
                CARRIER_IP, CARRIER_UAS_PORT)


async def sc_simple(drv, uas, uac, routes, actions=None, uac_delays=None):
    # routes are applied by run() before the recorder connects (see ROUTES)
    for u in uas:
        u.start()
    await asyncio.sleep(0.5)
    delays = uac_delays or [0] * len(uac)
    t0 = time.time()
    tasks = []

    async def launch(u, d):
        await asyncio.sleep(d)
        u.start()
        return await u.wait()
    for u, d in zip(uac, delays):
        tasks.append(asyncio.create_task(launch(u, d)))
    if actions:
        await actions(drv, t0)
    rcs = await asyncio.gather(*tasks)
    return rcs


SCENARIOS = []


ROUTES = {}


def scenario(num, name, desc, routes=None):
    def deco(fn):
        SCENARIOS.append(("%02d-%s" % (num, name), desc, fn))
        ROUTES["%02d-%s" % (num, name)] = routes or {}
        return fn
    return deco


@scenario(1, "inbound-answered-caller-hangup",
          "External 79161234567 calls DID 74951234567; phone 101 rings ~2 s, answers; "
          "talk ~5 s; the external caller hangs up.", routes={DID1: "to101"})
async def s01(drv):
    return await sc_simple(drv, [phone("101", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=5000)],
                           {DID1: "to101"})


@scenario(2, "inbound-answered-agent-hangup",
          "External 79262223344 calls DID 74951234567; phone 101 rings ~2 s, answers; "
          "talk ~5 s; the agent (101) hangs up.", routes={DID1: "to101"})
async def s02(drv):
    return await sc_simple(drv, [phone("101", "answer_then_bye", ring_ms=2000, talk_ms=5000)],
                           [caller("79262223344", DID1, "wait_bye")],
                           {DID1: "to101"})


@scenario(3, "inbound-missed-caller-abandons",
          "External 79161234567 calls DID 74951234567; phone 101 rings, nobody answers; "
          "the caller gives up (CANCEL) after ~6 s.", routes={DID1: "to101"})
async def s03(drv):
    return await sc_simple(drv, [phone("101", "ring_forever")],
                           [caller("79161234567", DID1, "cancel", cancel_ms=6000)],
                           {DID1: "to101"})


@scenario(4, "inbound-busy",
          "External 79853334455 calls DID 74951234567; phone 101 answers the INVITE with "
          "486 Busy Here; the PBX plays Busy() and the caller receives 486.", routes={DID1: "to101"})
async def s04(drv):
    return await sc_simple(drv, [phone("101", "reject", code="486 Busy Here")],
                           [caller("79853334455", DID1, "reject")],
                           {DID1: "to101"})


@scenario(5, "inbound-congestion",
          "External 79853334455 calls DID 74951234568 routed to phone 105 which answers the "
          "INVITE with 503 Service Unavailable; the PBX runs Congestion() and the caller "
          "receives 503.", routes={DID2: "to105"})
async def s05(drv):
    return await sc_simple(drv, [phone("105", "reject", code="503 Service Unavailable")],
                           [caller("79853334455", DID2, "reject")],
                           {DID2: "to105"})


@scenario(6, "inbound-ringgroup-102-answers",
          "External 79161234567 calls DID 74951234567 routed to a ring group "
          "Dial(Local/101@rg-members&Local/102@rg-members); both ring, 102 answers after ~3 s, "
          "101 is cancelled; talk ~5 s; caller hangs up.", routes={DID1: "ringgroup"})
async def s06(drv):
    return await sc_simple(drv, [phone("101", "ring_forever"),
                                 phone("102", "answer_wait_bye", ring_ms=3000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=5000)],
                           {DID1: "ringgroup"})


@scenario(7, "inbound-queue-102-answers",
          "External 79031234455 calls DID 74951234569 routed to Queue(support) (ringall, members "
          "PJSIP/101 and PJSIP/102). The PBX answers the call first (Answer, Wait 1 s), then the "
          "caller waits in queue; 101 rings and is cancelled, 102 answers after ~3 s; the caller "
          "hangs up ~10 s after the PBX answered.", routes={DID3: "queue"})
async def s07(drv):
    return await sc_simple(drv, [phone("101", "ring_forever"),
                                 phone("102", "answer_wait_bye", ring_ms=3000)],
                           [caller("79031234455", DID3, "hangup", talk_ms=10000)],
                           {DID3: "queue"})


@scenario(8, "outbound-answered",
          "Phone 101 dials external 79031112233 (SIP INVITE from the phone, dialplan "
          "from-internal -> Dial(PJSIP/79031112233@trunk)); the far end rings ~3 s, answers; "
          "talk ~4 s; 101 hangs up.")
async def s08(drv):
    return await sc_simple(drv, [carrier_uas("answer_wait_bye", ring_ms=3000)],
                           [phone_uac("101", "79031112233", "hangup", talk_ms=4000)], {})


@scenario(9, "outbound-not-answered",
          "Phone 101 dials external 79031112233; the far end rings and never answers; "
          "101 gives up (CANCEL) after ~8 s.")
async def s09(drv):
    return await sc_simple(drv, [carrier_uas("ring_forever")],
                           [phone_uac("101", "79031112233", "cancel", cancel_ms=8000)], {})


@scenario(10, "inbound-blind-transfer-101-to-102",
          "External 79161234567 calls DID 74951234567; 101 answers after ~2 s; ~3 s later the "
          "AMI action BlindTransfer (Channel=101's channel, Exten=102, Context=from-internal) "
          "sends the caller to 102; 101's leg is hung up by the PBX; 102 rings ~2 s, answers; "
          "caller hangs up 12 s after the first answer.", routes={DID1: "to101"})
async def s10(drv):
    async def act(drv, t0):
        ch = await drv.find_channel("PJSIP/101-")
        await asyncio.sleep(max(0, t0 + 5 - time.time()))
        r = await drv.action("BlindTransfer", Channel=ch, Exten="102", Context="from-internal")
        print("   BlindTransfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("101", "answer_wait_bye", ring_ms=2000),
                                 phone("102", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=12000)],
                           {DID1: "to101"}, actions=act)


@scenario(11, "inbound-attended-transfer-101-to-102",
          "External 79161234567 calls DID 74951234567; 101 answers after ~2 s; ~3 s later the "
          "AMI action Atxfer (Channel=101's channel, Exten=102, Context=from-internal) starts an "
          "attended transfer (feature *2): the caller is held, 101 consults 102 (102 rings ~2 s, "
          "answers); 101 hangs up ~10 s after it answered, which completes the transfer; the "
          "caller then talks to 102 and hangs up 20 s after the first answer.", routes={DID1: "to101"})
async def s11(drv):
    async def act(drv, t0):
        ch = await drv.find_channel("PJSIP/101-")
        await asyncio.sleep(max(0, t0 + 5 - time.time()))
        r = await drv.action("Atxfer", Channel=ch, Exten="102", Context="from-internal")
        print("   Atxfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("101", "answer_then_bye", ring_ms=2000, talk_ms=10000),
                                 phone("102", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=20000)],
                           {DID1: "to101"}, actions=act)


@scenario(12, "inbound-overlapping-three-calls",
          "Three overlapping inbound calls started 1 s apart: 79161112233 -> DID 74951234567 -> "
          "101 (rings ~2 s, answered, caller hangs up after ~8 s talk); 79262223344 -> DID "
          "74951234568 -> 102 (rings ~3 s, answered, 102 hangs up after ~4 s talk); "
          "79853334455 -> DID 74951234569 -> 103 (rings, never answered, caller abandons "
          "after ~7 s).", routes={DID1: "to101", DID2: "to102", DID3: "to103"})
async def s12(drv):
    return await sc_simple(drv, [phone("101", "answer_wait_bye", ring_ms=2000),
                                 phone("102", "answer_then_bye", ring_ms=3000, talk_ms=4000),
                                 phone("103", "ring_forever")],
                           [caller("79161112233", DID1, "hangup", talk_ms=8000),
                            caller("79262223344", DID2, "wait_bye"),
                            caller("79853334455", DID3, "cancel", cancel_ms=7000)],
                           {DID1: "to101", DID2: "to102", DID3: "to103"},
                           uac_delays=[0, 1.0, 2.0])


BURST_A = [("7916%07d" % (1000000 + i), DID_BURST_A) for i in range(35)]
BURST_B = [("7926%07d" % (2000000 + i), DID_BURST_B) for i in range(15)]


@scenario(13, "inbound-burst-50-calls",
          "Load burst: 50 inbound calls started within ~2 s. 35 calls from 79161000000.."
          "79161000034 to DID 74951234570 -> phone 104 (rings ~1 s, answered, caller hangs up "
          "after ~3 s); 15 calls from 79262000000..79262000014 to DID 74951234571 -> phone 105 "
          "(rings, never answered, callers abandon after ~4 s).", routes={DID_BURST_A: "to104", DID_BURST_B: "to105"})
async def s13(drv):
    return await sc_simple(drv, [phone("104", "answer_wait_bye", ring_ms=1000, calls=35),
                                 phone("105", "ring_forever", calls=15)],
                           [caller(None, None, "hangup", talk_ms=3000, calls=35, rate=20,
                                   inject=BURST_A),
                            caller(None, None, "cancel", cancel_ms=4000, calls=15, rate=10,
                                   inject=BURST_B)],
                           {DID_BURST_A: "to104", DID_BURST_B: "to105"},
                           uac_delays=[0, 0.2])


@scenario(14, "outbound-click-to-call-originate",
          "CRM click-to-call: AMI Originate Channel=PJSIP/101, Context=from-internal, "
          "Exten=79031112233, Priority=1, CallerID=79031112233, Async=true. Phone 101 rings "
          "~1.5 s and answers, then the PBX dials 79031112233 via the trunk; the far end rings "
          "~2 s, answers, and hangs up after ~5 s of talk.")
async def s14(drv):
    async def act(drv, t0):
        r = await drv.action("Originate", Channel="PJSIP/101", Context="from-internal",
                             Exten="79031112233", Priority="1", CallerID="79031112233",
                             Timeout="30000", Async="true")
        print("   Originate:", r[0].get("Response"), r[0].get("Message"))
        await asyncio.sleep(3)
        await drv.wait_idle()
    carrier = carrier_uas("answer_then_bye", ring_ms=2000, talk_ms=5000)
    return await sc_simple(drv, [phone("101", "answer_wait_bye", ring_ms=1500), carrier],
                           [], {}, actions=act)


@scenario(15, "internal-call-101-to-102",
          "Internal call: phone 101 dials 102; 102 rings ~2 s, answers; talk ~3 s; 101 hangs up. "
          "(No external party: a CRM tracker should ignore it or mark it internal.)")
async def s15(drv):
    return await sc_simple(drv, [phone("102", "answer_wait_bye", ring_ms=2000)],
                           [phone_uac("101", "102", "hangup", talk_ms=3000)], {})


@scenario(16, "inbound-queue-abandoned",
          "External 79167778899 calls DID 74951234569 routed to Queue(support). The PBX answers "
          "the call (Answer, Wait 1 s), both members 101 and 102 ring, nobody answers; the caller "
          "hangs up ~8 s after the PBX answered (abandoned in queue). The trunk channel is Up "
          "but no agent ever answered.", routes={DID3: "queue"})
async def s16(drv):
    return await sc_simple(drv, [phone("101", "ring_forever"), phone("102", "ring_forever")],
                           [caller("79167778899", DID3, "hangup", talk_ms=8000)], {DID3: "queue"})


# --------------------------------------------------------------------------
# lab scenarios 20..29 (Asterisk 22, PJSIP)
# --------------------------------------------------------------------------
DID4 = "74951234572"


def sipp_x(name, xml, ip, port, **kw):
    return Sipp(name, xml, ip, port, **kw)


def caller_any(number, did, after_answer="wait_bye", talk=0):
    port = _carrier_port[0]
    _carrier_port[0] += 1
    return Sipp("uac-any-%s" % after_answer, uac_any_xml(after_answer, talk), CARRIER_IP, port,
                inject=[(number, did)])


def caller_dist(kind, inject, talk=0, cancel=0, rate=1):
    port = _carrier_port[0]
    _carrier_port[0] += 1
    return Sipp("uac-dist-%s" % kind, uac_dist_xml(kind, talk, cancel), CARRIER_IP, port,
                calls=len(inject), rate=rate, inject=inject)


def phone_dist(ext, kind, ring=0, talk=0, calls=1):
    return Sipp("phone%s-uas-dist-%s" % (ext, kind), uas_dist_xml(kind, ring, talk),
                PHONE_IP, PHONE_PORT[ext], calls=calls)


@scenario(20, "inbound-directed-pickup-102-picks-101",
          "External 79161230020 calls DID 74951234567 (route to101: Dial(PJSIP/101,30,tT)); "
          "101 rings and never answers itself; ~3 s after the call started, phone 102 dials "
          "*8101 (from-internal _*8XXX -> PickupChan(PJSIP/101)) and picks the ringing call up; "
          "101's INVITE is cancelled; caller and 102 talk ~6 s; 102 hangs up (BYE from 102).",
          routes={DID1: "to101"})
async def s20(drv):
    return await sc_simple(drv, [phone("101", "ring_forever")],
                           [caller("79161230020", DID1, "wait_bye"),
                            phone_uac("102", "*8101", "hangup", talk_ms=6000)],
                           {}, uac_delays=[0, 3.0])


@scenario(21, "inbound-group-pickup-102-picks-101",
          "External 79161230021 calls DID 74951234567 (route to101); 101 rings and never "
          "answers itself; ~3 s after the call started phone 102 dials *8 (features.conf "
          "pickupexten, handled natively by chan_pjsip: group pickup; 101 has call_group=1, 102 "
          "pickup_group=1) and picks the ringing call up; 101's INVITE is cancelled; caller and "
          "102 talk ~6 s; 102 hangs up.", routes={DID1: "to101"})
async def s21(drv):
    return await sc_simple(drv, [phone("101", "ring_forever")],
                           [caller("79161230021", DID1, "wait_bye"),
                            phone_uac("102", "*8", "hangup", talk_ms=6000)],
                           {}, uac_delays=[0, 3.0])


@scenario(22, "inbound-pickup-by-invite-replaces",
          "External 79161230022 calls DID 74951234567 (route to101); 101 rings (sipp records "
          "the Call-ID / tags of the PBX's INVITE); ~3 s after the call started phone 102 sends "
          "a new INVITE sip:101@PBX with 'Replaces: <call-id of the PBX->101 dialog>;to-tag="
          "<PBX tag>;from-tag=<101's tag>' (RFC 3891, early dialog; res_pjsip_refer moves the "
          "ringing 101 channel onto 102's channel); 101's INVITE is cancelled; caller and 102 "
          "talk ~6 s; 102 hangs up.", routes={DID1: "to101"})
async def s22(drv):
    cap = os.path.join(WORK, "s22-dialog.txt")
    if os.path.exists(cap):
        os.remove(cap)
    ring = Sipp("phone101-uas-ring-capture", uas_ring_capture_xml(cap, "ph101early"),
                PHONE_IP, PHONE_PORT["101"])
    ring.start()
    await asyncio.sleep(0.5)
    c = caller("79161230022", DID1, "wait_bye").start()
    t0 = time.time()
    while not (os.path.exists(cap) and os.path.getsize(cap) > 0) and time.time() - t0 < 10:
        await asyncio.sleep(0.1)
    cid, pbx_tag, phone_tag = open(cap).read().split()
    print("   captured dialog:", cid, pbx_tag, phone_tag)
    await asyncio.sleep(max(0, t0 + 3 - time.time()))
    rep = Sipp("phone102-uac-replaces", uac_replaces_xml(6000), PHONE_IP, PHONE_PORT["102"],
               inject=[(DEVICE["102"], DEVICE["101"], cid, pbx_tag, phone_tag)]).start()
    return [await rep.wait(), await c.wait()]


@scenario(23, "inbound-blonde-transfer-101-to-102",
          "External 79161230023 calls DID 74951234567 (route to101); 101 answers after ~2 s; "
          "~2 s later the AMI action Atxfer (Channel=101's channel, Exten=102, Context="
          "from-internal; = feature *2) starts an attended transfer: the caller is held, "
          "Local/102@from-internal rings 102; ~2 s later (102 still ringing) 101 hangs up, which "
          "completes the transfer 'blonde' (atxferdropcall=no): the caller is connected to the "
          "still ringing 102; 102 answers ~7 s after it started ringing; the caller hangs up "
          "20 s after its call was first answered.", routes={DID1: "to101"})
async def s23(drv):
    async def act(drv, t0):
        ch = await drv.find_channel("PJSIP/101-")
        await asyncio.sleep(max(0, t0 + 4 - time.time()))
        r = await drv.action("Atxfer", Channel=ch, Exten="102", Context="from-internal")
        print("   Atxfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("101", "answer_then_bye", ring_ms=2000, talk_ms=4000),
                                 phone("102", "answer_wait_bye", ring_ms=7000)],
                           [caller("79161230023", DID1, "hangup", talk_ms=20000)],
                           {}, actions=act)


@scenario(24, "inbound-forward-to-mobile-accepted",
          "External 79161230024 calls DID 74951234568 (route fwdmobile): Dial(PJSIP/101,5,tT) "
          "rings 101 for 5 s (no answer, CANCEL), then Dial(PJSIP/79990001122@trunk,30,"
          "tTU(confirm-mobile)); the mobile (sipp on the carrier side) rings ~2 s and answers; "
          "the Gosub confirm-mobile on the mobile leg plays a tone and Read()s one digit; the "
          "mobile sends DTMF 1 as SIP INFO (application/dtmf-relay) ~1.5 s after answering; "
          "the Gosub returns, the caller is answered and bridged to the mobile; caller talks "
          "~8 s and hangs up.", routes={DID2: "fwdmobile"})
async def s24(drv):
    mobile = Sipp("carrier-uas-answer-dtmf", uas_answer_dtmf_xml(2000, 1500, "1"),
                  CARRIER_IP, CARRIER_UAS_PORT)
    return await sc_simple(drv, [phone("101", "ring_forever"), mobile],
                           [caller_any("79161230024", DID2, "hangup", 8000)], {})


@scenario(25, "inbound-forward-to-mobile-not-accepted",
          "External 79161230025 calls DID 74951234568 (route fwdmobile): 101 rings 5 s (no "
          "answer, CANCEL), then the PBX dials the mobile 79990001122 via the trunk with "
          "U(confirm-mobile); the mobile rings ~2 s and answers (200 OK) but never presses a "
          "digit; Read() times out after 6 s, the Gosub sets GOSUB_RESULT=CONTINUE, the PBX "
          "hangs up the mobile leg (BYE) and the caller's dialplan continues to Hangup(19): "
          "the caller, never answered, gets 480. The caller and the mobile were never connected.",
          routes={DID2: "fwdmobile"})
async def s25(drv):
    return await sc_simple(drv, [phone("101", "ring_forever"),
                                 carrier_uas("answer_wait_bye", ring_ms=2000)],
                           [caller_any("79161230025", DID2, "wait_bye")], {})


@scenario(26, "inbound-two-calls-joined-by-101",
          "A = 79161230026 calls DID 74951234567 (route to101); 101 answers after ~1.5 s; ~2.5 s "
          "later 101 puts A on hold (re-INVITE a=sendonly). C = 79262230026 calls DID "
          "74951234569 (route to101) 5 s after A; 101 (same phone, second line) answers C after "
          "~1.5 s. ~2.5 s later 101 joins them the way a desk phone's transfer key does: a "
          "REFER in A's dialog with Refer-To <sip:101@PBX?Replaces=<C's dialog>> (attended "
          "transfer of A to C via res_pjsip_refer). The PBX bridges A with C and hangs up both "
          "of 101's legs (BYE). A and C talk; C hangs up 12 s after it was answered.",
          routes={DID1: "to101", DID3: "to101"})
async def s26(drv):
    p101 = Sipp("phone101-uas-two-calls-join",
                uas_two_calls_join_xml("79262230026", 1500, 2500, 5000),
                PHONE_IP, PHONE_PORT["101"], calls=2)
    return await sc_simple(drv, [p101],
                           [caller("79161230026", DID1, "wait_bye"),
                            caller("79262230026", DID3, "hangup", talk_ms=12000)],
                           {}, uac_delays=[0, 5.0])


@scenario(27, "outbound-click-to-call-busy",
          "CRM click-to-call: AMI Originate Channel=PJSIP/101, Context=from-internal, "
          "Exten=79031112233, Priority=1, CallerID=79031112233, Async=true. Phone 101 rings "
          "~1.5 s and answers, then the PBX dials 79031112233 via the trunk; the carrier answers "
          "that INVITE with 486 Busy Here; Dial ends BUSY, from-internal runs Hangup() and the "
          "PBX hangs up 101 (BYE). No outside party was ever connected.")
async def s27(drv):
    async def act(drv, t0):
        r = await drv.action("Originate", Channel="PJSIP/101", Context="from-internal",
                             Exten="79031112233", Priority="1", CallerID="79031112233",
                             Timeout="30000", Async="true")
        print("   Originate:", r[0].get("Response"), r[0].get("Message"))
        await asyncio.sleep(3)
        await drv.wait_idle()
    busy = Sipp("carrier-uas-reject", uas_xml("reject", code="486 Busy Here", ua="CarrierGW"),
                CARRIER_IP, CARRIER_UAS_PORT)
    return await sc_simple(drv, [phone("101", "answer_wait_bye", ring_ms=1500), busy],
                           [], {}, actions=act)


BURST28_A = [("7916300%04d" % i, DID_BURST_A) for i in range(20)]
BURST28_B = [("7926300%04d" % i, DID4) for i in range(15)]
BURST28_C = [("7985300%04d" % i, DID_BURST_B) for i in range(15)]


@scenario(28, "inbound-burst-50-calls-varied",
          "Burst for restart/backfill tests, one continuous AMI session: 50 inbound calls started "
          "within ~15 s. (A) 20 calls 79163000000..79163000019 -> DID 74951234570 -> phone 104 "
          "(started 1.5/s; 104 rings 1-4 s (uniform), answers; the caller hangs up after 2-12 s "
          "talk); (B) 15 calls 79263000000..79263000014 -> DID 74951234572 -> phone 103 (1/s, "
          "starting 0.3 s after A; 103 rings 1-3 s, answers, 103 hangs up after 2-12 s talk); "
          "(C) 15 calls 79853000000..79853000014 -> DID 74951234571 -> phone 105 (1/s, starting "
          "0.6 s after A; 105 rings and never answers; callers abandon after 3-8 s). Every "
          "external number is unique.",
          routes={DID_BURST_A: "to104", DID4: "to103", DID_BURST_B: "to105"})
async def s28(drv):
    return await sc_simple(
        drv, [phone_dist("104", "answer_wait_bye", ring=(1000, 4000), calls=20),
              phone_dist("103", "answer_then_bye", ring=(1000, 3000), talk=(2000, 12000),
                         calls=15),
              phone("105", "ring_forever", calls=15)],
        [caller_dist("hangup", BURST28_A, talk=(2000, 12000), rate=1.5),
         caller(None, None, "wait_bye", calls=15, rate=1, inject=BURST28_B),
         caller_dist("cancel", BURST28_C, cancel=(3000, 8000), rate=1)],
        {}, uac_delays=[0, 0.3, 0.6])


@scenario(29, "inbound-ami-link-cut-7s",
          "AMI link cut: the recorder's AMI connection is closed 3 s into the scenario and a new "
          "one is opened 7 s later (file NN.ami = session 1; NN.session2.ami = session 2, which "
          "starts with the banner, the Login response and the answer to 'Action: "
          "CoreShowChannels' (ActionID rec-resync) that the recorder sends right after login). "
          "Calls (t = seconds from the first INVITE): C1 79161110001 -> DID 74951234567 -> 101 "
          "(t=0, answered ~1.5 s, caller hangs up after 16 s talk: spans the gap); C2 "
          "79161110002 -> DID 74951234568 -> 102 (t=0.5, answered ~1.5 s later, 102 hangs up "
          "after 3 s: ends inside the gap); C3 79161110003 -> DID 74951234569 -> 103 (t=4.5, "
          "answered ~1.5 s later, caller hangs up after 2 s: entirely inside the gap, never seen "
          "on AMI); C4 79161110004 -> DID 74951234571 -> 105 (t=6, rings, caller abandons after "
          "8 s: starts in the gap, ends after it); C5 79161110005 -> DID 74951234570 -> 104 "
          "(t=12, answered ~1.5 s, caller hangs up after 3 s: after the reconnect).",
          routes={DID1: "to101", DID2: "to102", DID3: "to103", DID_BURST_B: "to105",
                  DID_BURST_A: "to104"})
async def s29(drv):
    async def act(drv, t0):
        await asyncio.sleep(max(0, t0 + 3 - time.time()))
        rec = CURRENT["rec"]
        cut = time.time()
        await rec.stop()
        print("   AMI recorder disconnected", flush=True)
        await asyncio.sleep(7)
        path2 = re.sub(r"\.ami$", "", CURRENT["path"]) + ".session2.ami"
        rec2 = Recorder(path2)
        await rec2.start()
        t1 = time.time()
        while b"rec-login" not in rec2.buf and time.time() - t1 < 5:
            await asyncio.sleep(0.05)
        rec2.writer.write(b"Action: CoreShowChannels\r\nActionID: rec-resync\r\n\r\n")
        await rec2.writer.drain()
        CURRENT["rec"] = rec2
        print("   AMI recorder reconnected", flush=True)
        with open(re.sub(r"\.ami$", "", CURRENT["path"]) + ".gap.json", "w") as f:
            json.dump({"session1_closed_wallclock": round(cut, 6),
                       "session2_connected_wallclock": round(rec2.wall0, 6),
                       "gap_seconds": round(rec2.wall0 - cut, 3)}, f, indent=1)
    return await sc_simple(
        drv, [phone("101", "answer_wait_bye", ring_ms=1500),
              phone("102", "answer_then_bye", ring_ms=1500, talk_ms=3000),
              phone("103", "answer_wait_bye", ring_ms=1500),
              phone("104", "answer_wait_bye", ring_ms=1500),
              phone("105", "ring_forever")],
        [caller("79161110001", DID1, "hangup", talk_ms=16000),
         caller("79161110002", DID2, "wait_bye"),
         caller("79161110003", DID3, "hangup", talk_ms=2000),
         caller("79161110004", DID_BURST_B, "cancel", cancel_ms=8000),
         caller("79161110005", DID_BURST_A, "hangup", talk_ms=3000)],
        {}, uac_delays=[0, 0.5, 4.5, 6.0, 12.0], actions=act)


# --------------------------------------------------------------------------
# lab scenarios 41..59: Asterisk 20 + chan_sip, phones named by account
# (LAB_PROFILE=chansip; extension 20N = SIP peer 15001000N, caller ID "Office 20N" <20N>)
# --------------------------------------------------------------------------
def dev_chan(ext):
    return "%s/%s-" % (TECH, DEVICE[ext])


@scenario(41, "sip-inbound-answered-caller-hangup",
          "chan_sip. External 79161234567 calls DID 74951234567 (route to201: "
          "Dial(SIP/150010001)); phone 201 (peer 150010001) rings ~2 s, answers; talk ~5 s; the "
          "external caller hangs up.", routes={DID1: "to201"})
async def s41(drv):
    return await sc_simple(drv, [phone("201", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=5000)], {})


@scenario(42, "sip-inbound-missed-caller-abandons",
          "chan_sip. External 79161234567 calls DID 74951234567 -> 201; 201 rings, nobody "
          "answers; the caller gives up (CANCEL) after ~6 s.", routes={DID1: "to201"})
async def s42(drv):
    return await sc_simple(drv, [phone("201", "ring_forever")],
                           [caller("79161234567", DID1, "cancel", cancel_ms=6000)], {})


@scenario(43, "sip-inbound-busy",
          "chan_sip. External 79853334455 calls DID 74951234567 -> 201; phone 201 answers the "
          "INVITE with 486 Busy Here; the PBX runs Busy() and the caller receives 486.",
          routes={DID1: "to201"})
async def s43(drv):
    return await sc_simple(drv, [phone("201", "reject", code="486 Busy Here")],
                           [caller("79853334455", DID1, "reject")], {})


@scenario(44, "sip-inbound-ringgroup-202-answers",
          "chan_sip. External 79161234567 calls DID 74951234567 routed to a ring group "
          "Dial(Local/201@rg-members&Local/202@rg-members); both ring, 202 answers after ~3 s, "
          "201 is cancelled; talk ~5 s; caller hangs up.", routes={DID1: "ringgroup"})
async def s44(drv):
    return await sc_simple(drv, [phone("201", "ring_forever"),
                                 phone("202", "answer_wait_bye", ring_ms=3000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=5000)], {})


@scenario(45, "sip-inbound-queue-202-answers",
          "chan_sip. External 79031234455 calls DID 74951234569 routed to Queue(support) "
          "(ringall, members SIP/150010001 and SIP/150010002). The PBX answers first (Answer, "
          "Wait 1 s); 201 rings and is cancelled, 202 answers after ~3 s; the caller hangs up "
          "~10 s after the PBX answered.", routes={DID3: "queue"})
async def s45(drv):
    return await sc_simple(drv, [phone("201", "ring_forever"),
                                 phone("202", "answer_wait_bye", ring_ms=3000)],
                           [caller("79031234455", DID3, "hangup", talk_ms=10000)], {})


@scenario(46, "sip-outbound-answered",
          "chan_sip. Phone 201 (peer 150010001, From user 150010001) dials external 79031112233 "
          "(from-internal -> Dial(SIP/trunk/79031112233)); the far end rings ~3 s, answers; talk "
          "~4 s; 201 hangs up.")
async def s46(drv):
    return await sc_simple(drv, [carrier_uas("answer_wait_bye", ring_ms=3000)],
                           [phone_uac("201", "79031112233", "hangup", talk_ms=4000)], {})


@scenario(47, "sip-outbound-not-answered",
          "chan_sip. Phone 201 dials external 79031112233; the far end rings and never answers; "
          "201 gives up (CANCEL) after ~8 s.")
async def s47(drv):
    return await sc_simple(drv, [carrier_uas("ring_forever")],
                           [phone_uac("201", "79031112233", "cancel", cancel_ms=8000)], {})


@scenario(48, "sip-inbound-blind-transfer-201-to-202",
          "chan_sip. External 79161234567 calls DID 74951234567 -> 201; 201 answers after ~2 s; "
          "~3 s later the AMI action BlindTransfer (Channel=201's channel, Exten=202, "
          "Context=from-internal) sends the caller to 202; 202 rings ~2 s, answers; caller hangs "
          "up 12 s after the first answer.", routes={DID1: "to201"})
async def s48(drv):
    async def act(drv, t0):
        ch = await drv.find_channel(dev_chan("201"))
        await asyncio.sleep(max(0, t0 + 5 - time.time()))
        r = await drv.action("BlindTransfer", Channel=ch, Exten="202", Context="from-internal")
        print("   BlindTransfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("201", "answer_wait_bye", ring_ms=2000),
                                 phone("202", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=12000)],
                           {}, actions=act)


@scenario(49, "sip-inbound-attended-transfer-201-to-203",
          "chan_sip. External 79161234567 calls DID 74951234567 -> 201; 201 answers after ~2 s; "
          "~3 s later the AMI action Atxfer (Channel=201's channel, Exten=203, "
          "Context=from-internal; feature *2) starts an attended transfer: the caller is held, "
          "201 consults 203 (rings ~2 s, answers); 201 hangs up ~10 s after it answered, which "
          "completes the transfer; the caller talks to 203 and hangs up 20 s after the first "
          "answer.", routes={DID1: "to201"})
async def s49(drv):
    async def act(drv, t0):
        ch = await drv.find_channel(dev_chan("201"))
        await asyncio.sleep(max(0, t0 + 5 - time.time()))
        r = await drv.action("Atxfer", Channel=ch, Exten="203", Context="from-internal")
        print("   Atxfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("201", "answer_then_bye", ring_ms=2000, talk_ms=10000),
                                 phone("203", "answer_wait_bye", ring_ms=2000)],
                           [caller("79161234567", DID1, "hangup", talk_ms=20000)],
                           {}, actions=act)


@scenario(50, "sip-outbound-click-to-call-originate",
          "chan_sip. CRM click-to-call: AMI Originate Channel=SIP/150010001, Context="
          "from-internal, Exten=79031112233, Priority=1, CallerID=79031112233, Async=true. Phone "
          "201 rings ~1.5 s and answers, then the PBX dials 79031112233 via the trunk; the far "
          "end rings ~2 s, answers, and hangs up after ~5 s of talk.")
async def s50(drv):
    async def act(drv, t0):
        r = await drv.action("Originate", Channel="SIP/" + DEVICE["201"], Context="from-internal",
                             Exten="79031112233", Priority="1", CallerID="79031112233",
                             Timeout="30000", Async="true")
        print("   Originate:", r[0].get("Response"), r[0].get("Message"))
        await asyncio.sleep(3)
        await drv.wait_idle()
    carrier = carrier_uas("answer_then_bye", ring_ms=2000, talk_ms=5000)
    return await sc_simple(drv, [phone("201", "answer_wait_bye", ring_ms=1500), carrier],
                           [], {}, actions=act)


@scenario(51, "sip-internal-call-201-to-202",
          "chan_sip. Internal call: phone 201 (peer 150010001) dials 202; 202 (peer 150010002) "
          "rings ~2 s, answers; talk ~3 s; 201 hangs up.")
async def s51(drv):
    return await sc_simple(drv, [phone("202", "answer_wait_bye", ring_ms=2000)],
                           [phone_uac("201", "202", "hangup", talk_ms=3000)], {})


@scenario(52, "sip-inbound-directed-pickup-202-picks-201",
          "chan_sip. External 79161230052 calls DID 74951234567 -> 201 (rings, never answers "
          "itself); ~3 s later phone 202 dials *8201 (PickupChan(SIP/150010001)) and picks the "
          "call up; 201's INVITE is cancelled; caller and 202 talk ~6 s; 202 hangs up.",
          routes={DID1: "to201"})
async def s52(drv):
    return await sc_simple(drv, [phone("201", "ring_forever")],
                           [caller("79161230052", DID1, "wait_bye"),
                            phone_uac("202", "*8201", "hangup", talk_ms=6000)],
                           {}, uac_delays=[0, 3.0])


@scenario(53, "sip-inbound-group-pickup-202-picks-201",
          "chan_sip. External 79161230053 calls DID 74951234567 -> 201 (rings, never answers "
          "itself); ~3 s later phone 202 dials *8 (features.conf pickupexten, handled by chan_sip; "
          "callgroup=1/pickupgroup=1) and picks the call up; caller and 202 talk ~6 s; 202 hangs "
          "up.", routes={DID1: "to201"})
async def s53(drv):
    return await sc_simple(drv, [phone("201", "ring_forever")],
                           [caller("79161230053", DID1, "wait_bye"),
                            phone_uac("202", "*8", "hangup", talk_ms=6000)],
                           {}, uac_delays=[0, 3.0])


@scenario(54, "sip-inbound-forward-to-mobile-accepted",
          "chan_sip. External 79161230054 calls DID 74951234568 (route fwdmobile): Dial(SIP/"
          "150010001,5) rings 201 for 5 s (no answer), then Dial(SIP/trunk/79990001122,30,"
          "tTU(confirm-mobile)); the mobile rings ~2 s and answers; it sends DTMF 1 as SIP INFO "
          "~1.5 s later; the caller is bridged to the mobile, talks ~8 s and hangs up.",
          routes={DID2: "fwdmobile"})
async def s54(drv):
    mobile = Sipp("carrier-uas-answer-dtmf", uas_answer_dtmf_xml(2000, 1500, "1"),
                  CARRIER_IP, CARRIER_UAS_PORT)
    return await sc_simple(drv, [phone("201", "ring_forever"), mobile],
                           [caller_any("79161230054", DID2, "hangup", 8000)], {})


@scenario(55, "sip-inbound-forward-to-mobile-not-accepted",
          "chan_sip. External 79161230055 calls DID 74951234568 (route fwdmobile): 201 rings 5 s, "
          "then the mobile 79990001122 is dialled with U(confirm-mobile); it answers after ~2 s "
          "but never presses a digit; Read() times out after 6 s, GOSUB_RESULT=CONTINUE, the PBX "
          "hangs up the mobile and the caller (never answered) gets Hangup(19).",
          routes={DID2: "fwdmobile"})
async def s55(drv):
    return await sc_simple(drv, [phone("201", "ring_forever"),
                                 carrier_uas("answer_wait_bye", ring_ms=2000)],
                           [caller_any("79161230055", DID2, "wait_bye")], {})


@scenario(56, "sip-inbound-blonde-transfer-201-to-202",
          "chan_sip. External 79161230056 calls DID 74951234567 -> 201; 201 answers after ~2 s; "
          "~2 s later AMI Atxfer (Exten=202) starts an attended transfer; 202 rings; ~2 s later "
          "201 hangs up while 202 is still ringing (blonde); 202 answers ~7 s after it started "
          "ringing; the caller hangs up 20 s after its call was first answered.",
          routes={DID1: "to201"})
async def s56(drv):
    async def act(drv, t0):
        ch = await drv.find_channel(dev_chan("201"))
        await asyncio.sleep(max(0, t0 + 4 - time.time()))
        r = await drv.action("Atxfer", Channel=ch, Exten="202", Context="from-internal")
        print("   Atxfer:", r[0].get("Response"), r[0].get("Message"))
    return await sc_simple(drv, [phone("201", "answer_then_bye", ring_ms=2000, talk_ms=4000),
                                 phone("202", "answer_wait_bye", ring_ms=7000)],
                           [caller("79161230056", DID1, "hangup", talk_ms=20000)],
                           {}, actions=act)


@scenario(57, "sip-inbound-two-calls-joined-by-201",
          "chan_sip. A = 79161230057 calls DID 74951234567 -> 201; 201 answers after ~1.5 s, "
          "~2.5 s later holds A (re-INVITE sendonly). C = 79262230057 calls DID 74951234569 -> "
          "201 5 s after A; 201 answers C after ~1.5 s; ~2.5 s later 201 sends REFER in A's "
          "dialog with Refer-To <...?Replaces=C's dialog> (attended transfer A -> C). A and C "
          "talk; C hangs up 12 s after it was answered.",
          routes={DID1: "to201", DID3: "to201"})
async def s57(drv):
    p = Sipp("phone201-uas-two-calls-join",
             uas_two_calls_join_xml("79262230057", 1500, 2500, 5000),
             PHONE_IP, PHONE_PORT["201"], calls=2)
    return await sc_simple(drv, [p],
                           [caller("79161230057", DID1, "wait_bye"),
                            caller("79262230057", DID3, "hangup", talk_ms=12000)],
                           {}, uac_delays=[0, 5.0])


@scenario(58, "sip-outbound-click-to-call-busy",
          "chan_sip. AMI Originate Channel=SIP/150010001, Context=from-internal, "
          "Exten=79031112233, CallerID=79031112233; 201 rings ~1.5 s and answers; the carrier "
          "answers the trunk INVITE with 486 Busy Here; the PBX hangs up 201.")
async def s58(drv):
    async def act(drv, t0):
        r = await drv.action("Originate", Channel="SIP/" + DEVICE["201"], Context="from-internal",
                             Exten="79031112233", Priority="1", CallerID="79031112233",
                             Timeout="30000", Async="true")
        print("   Originate:", r[0].get("Response"), r[0].get("Message"))
        await asyncio.sleep(3)
        await drv.wait_idle()
    busy = Sipp("carrier-uas-reject", uas_xml("reject", code="486 Busy Here", ua="CarrierGW"),
                CARRIER_IP, CARRIER_UAS_PORT)
    return await sc_simple(drv, [phone("201", "answer_wait_bye", ring_ms=1500), busy],
                           [], {}, actions=act)


@scenario(59, "sip-inbound-pickup-by-invite-replaces",
          "chan_sip. External 79161230059 calls DID 74951234567 -> 201 (rings; sipp records the "
          "PBX's Call-ID/tags); ~3 s later phone 202 sends INVITE with Replaces for that early "
          "dialog; caller and 202 talk ~6 s; 202 hangs up.", routes={DID1: "to201"})
async def s59(drv):
    cap = os.path.join(WORK, "s59-dialog.txt")
    if os.path.exists(cap):
        os.remove(cap)
    ring = Sipp("phone201-uas-ring-capture", uas_ring_capture_xml(cap, "ph201early"),
                PHONE_IP, PHONE_PORT["201"])
    ring.start()
    await asyncio.sleep(0.5)
    c = caller("79161230059", DID1, "wait_bye").start()
    t0 = time.time()
    while not (os.path.exists(cap) and os.path.getsize(cap) > 0) and time.time() - t0 < 10:
        await asyncio.sleep(0.1)
    cid, pbx_tag, phone_tag = open(cap).read().split()
    print("   captured dialog:", cid, pbx_tag, phone_tag)
    await asyncio.sleep(max(0, t0 + 3 - time.time()))
    rep = Sipp("phone202-uac-replaces", uac_replaces_xml(6000), PHONE_IP, PHONE_PORT["202"],
               inject=[(DEVICE["202"], DEVICE["201"], cid, pbx_tag, phone_tag)]).start()
    return [await rep.wait(), await c.wait()]


# --------------------------------------------------------------------------
# ground truth: expected calls per scenario, checked against the recorded
# Cdr events, plus durations measured from the recorded stream timing
# --------------------------------------------------------------------------
def _exp(direction, external, did, answered, extension, disposition, **kw):
    d = {"direction": direction, "external_number": external, "did": did,
         "answered": answered, "extension": extension, "disposition": disposition}
    d.update(kw)
    return d


EXPECT = {
    "01": [_exp("in", "79161234567", DID1, True, "101", "ANSWERED", hangup_by="caller")],
    "02": [_exp("in", "79262223344", DID1, True, "101", "ANSWERED", hangup_by="agent")],
    "03": [_exp("in", "79161234567", DID1, False, None, "NO ANSWER", rang=["101"],
                hangup_by="caller")],
    "04": [_exp("in", "79853334455", DID1, False, None, "BUSY", rang=["101"])],
    "05": [_exp("in", "79853334455", DID2, False, None, "CONGESTION", rang=["105"])],
    "06": [_exp("in", "79161234567", DID1, True, "102", "ANSWERED", rang=["101", "102"],
                via="ring group (Local channels)", hangup_by="caller")],
    "07": [_exp("in", "79031234455", DID3, True, "102", "ANSWERED", rang=["101", "102"],
                via="queue support", hangup_by="caller",
                note="PBX answers the trunk channel before any agent (Answer+Queue): the trunk "
                     "channel goes Up ~immediately, and Cdr billsec counts from that PBX answer, "
                     "so the CDR-based ring is 0; the agent really answered ~4 s after arrival "
                     "(see ring_seconds_events).")],
    "08": [_exp("out", "79031112233", None, True, "101", "ANSWERED", hangup_by="agent")],
    "09": [_exp("out", "79031112233", None, False, "101", "NO ANSWER", hangup_by="agent")],
    "10": [_exp("in", "79161234567", DID1, True, "101", "ANSWERED", final_extension="102",
                transfer="blind (AMI BlindTransfer) 101 -> 102", hangup_by="caller")],
    "11": [_exp("in", "79161234567", DID1, True, "101", "ANSWERED", final_extension="102",
                transfer="attended (AMI Atxfer, feature *2) 101 -> 102", hangup_by="caller")],
    "12": [_exp("in", "79161112233", DID1, True, "101", "ANSWERED", hangup_by="caller"),
           _exp("in", "79262223344", DID2, True, "102", "ANSWERED", hangup_by="agent"),
           _exp("in", "79853334455", DID3, False, None, "NO ANSWER", rang=["103"],
                hangup_by="caller")],
    "13": [_exp("in", n, d, True, "104", "ANSWERED", hangup_by="caller") for n, d in BURST_A] +
          [_exp("in", n, d, False, None, "NO ANSWER", rang=["105"], hangup_by="caller")
           for n, d in BURST_B],
    "14": [_exp("out", "79031112233", None, True, "101", "ANSWERED", hangup_by="external",
                via="AMI Originate click-to-call (Channel=PJSIP/101, Exten=79031112233, "
                    "CallerID=79031112233)",
                note="The PBX first rings 101 (that leg is created by Originate), then dials the "
                     "trunk. Cdr Source is 79031112233 because the Originate set CallerID to the "
                     "dialed number; Cdr duration-billsec measures 101's ring, not the external "
                     "party's ring.")],
    "15": [_exp("internal", None, None, True, "102", "ANSWERED", from_extension="101",
                note="internal call; no external party")],
    "16": [_exp("in", "79167778899", DID3, False, None, "NO ANSWER", rang=["101", "102"],
                via="queue support", hangup_by="caller",
                note="The PBX answered the trunk channel (it is Up, Cdr billsec > 0) but no agent "
                     "ever answered: a correct tracker must report this call as missed / "
                     "abandoned in queue.")],
}


# ---- lab: ground truth for 20..29 (checked by hand against the recorded traces) ----
T_PICK = [{"from": "101", "to": "102", "kind": "pickup"}]
EXPECT.update({
    "20": [_exp("in", "79161230020", DID1, True, "102", "ANSWERED", rang=["101"],
                answered_by="102", final_extension="102", hangup_by="agent",
                via="directed pickup: 102 dialled *8101 -> PickupChan(PJSIP/101)",
                pickup={"by": "102", "ringing": "101", "kind": "directed"},
                note="Answered by the picker 102, not by 101. In this recording the trunk's CDR "
                     "row Dial -> PJSIP/101 says ANSWERED with billsec 0 although 101 never "
                     "answered. The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "A second row (Dial -> PJSIP/102) carries the talk; 101's own channel gets a "
                     "CDR '101 -> *8101 AppDial NO ANSWER'. 102's channel is created with its "
                     "own Linkedid (= its Uniqueid, Exten *8101) and takes the trunk's Linkedid "
                     "only after the Pickup event; the Pickup event names TargetChannel "
                     "PJSIP/101-...")],
    "21": [_exp("in", "79161230021", DID1, True, "102", "ANSWERED", rang=["101"],
                answered_by="102", final_extension="102", hangup_by="agent",
                via="group pickup: 102 dialled *8 (native chan_pjsip pickupexten, Pickup event)",
                pickup={"by": "102", "ringing": "101", "kind": "group"},
                note="Answered by the picker 102. The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "CDR here: trunk -> PJSIP/101 NO ANSWER, trunk -> PJSIP/102 ANSWERED (the picked-up leg appears as if Dial had called 102); "
                     "101's channel has its own CDR '101 -> *8 NO ANSWER'. 102's channel starts "
                     "with its own Linkedid (Exten *8) and takes the trunk's Linkedid after the "
                     "pickup.")],
    "22": [_exp("in", "79161230022", DID1, True, "102", "ANSWERED", rang=["101"],
                answered_by="102", final_extension="102", hangup_by="agent",
                via="pickup by INVITE with Replaces (102 replaced the ringing PBX->101 dialog)",
                pickup={"by": "102", "ringing": "101", "kind": "replaces"},
                note="Answered by 102. No Pickup event on AMI: 102's channel appears as a new "
                     "call from 102 to Exten 101 in from-internal (looks like an internal call "
                     "102->101), goes Up at once, sends Unhold, and the ringing PJSIP/101 channel "
                     "is masqueraded away (Hangup Cause 0). The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "CDR here: trunk -> PJSIP/101 FAILED, "
                     "trunk -> PJSIP/102 ANSWERED (StartTime = the moment of the Replaces, so "
                     "its ring is 0); 101's own CDR row FAILED.")],
    "23": [_exp("in", "79161230023", DID1, True, "101", "ANSWERED", answered_by="101",
                final_extension="102", hangup_by="caller",
                transfers=[{"from": "101", "to": "102", "kind": "attended"}],
                via="blonde transfer: Atxfer (*2) to 102, 101 hung up while 102 was ringing",
                note="Attended transfer completed while the target was still ringing (blonde): "
                     "AttendedTransfer Result=Success (TransferTargetChannel=Local/102@"
                     "from-internal-...;1, still Ringing) is emitted when 101 hangs up; 102 "
                     "answers ~5 s later (~7 s of ringing in all). The Hangup event of 101's "
                     "channel only appears when 102 answers. The CDR row trunk -> Local/102;1 "
                     "has AnswerTime = the start of the consultation (Atxfer), so its billsec "
                     "includes the ~7 s during which 102 was ringing; 102's own row (Local;2 -> "
                     "PJSIP/102) has the real talk time.")],
    "24": [_exp("in", "79161230024", DID2, True, "101", "ANSWERED", rang=["101", "79990001122"],
                answered_by="101", final_extension="101", forwarded_to="79990001122",
                hangup_by="caller",
                via="forward on no answer to the mobile of 101 (Dial trunk with U(confirm-mobile))",
                note="ONE inbound call: the forward leg PJSIP/trunk-... (outbound channel on the "
                     "same Linkedid) is not a separate outbound call. Answered: the mobile "
                     "79990001122 (101's forward target) answered and accepted with DTMF 1 "
                     "(SIP INFO); the caller was bridged to it. extension/answered_by = 101 "
                     "(the employee whose forward it is); the party that actually talked is "
                     "forwarded_to. CDR: trunk -> 101 NO ANSWER, trunk -> trunk(mobile) "
                     "ANSWERED with AnswerTime = the mobile's 200 OK (before the acceptance); the "
                     "mobile leg's CallerIDNum on AMI is 'fwdmobile' (the route exten).")],
    "25": [_exp("in", "79161230025", DID2, False, None, "NO ANSWER",
                rang=["101", "79990001122"], forwarded_to="79990001122", hangup_by="pbx",
                via="forward on no answer to the mobile; mobile answered but did not accept",
                note="NOT answered: the mobile answered (its trunk channel went Up) but never "
                     "pressed 1; Read() timed out (READSTATUS=TIMEOUT), GOSUB_RESULT=CONTINUE, "
                     "the PBX hung up the mobile and the caller (never answered, trunk channel "
                     "stays in state Ring) got Hangup(19) -> 480. On AMI the mobile leg's DialEnd "
                     "has DialStatus=CONTINUE and DIALSTATUS is set to ANSWER (not NOANSWER); "
                     "CDR: trunk -> 101 NO ANSWER, trunk -> mobile FAILED (billsec 0), Hangup "
                     "NO ANSWER. disposition here is NO ANSWER by the project's rules.")],
    "26": [_exp("in", "79161230026", DID1, True, "101", "ANSWERED", answered_by="101",
                final_extension=None, final_party="79262230026", hangup_by="other outside party",
                transfers=[{"from": "101", "to": "79262230026", "kind": "attended"}],
                via="101 joined A with C (REFER with Replaces = attended transfer)",
                note="A's call: answered by 101, held, then attended-transferred by 101 to the "
                     "other outside caller C (AttendedTransfer: Transferee=A's trunk channel, "
                     "TransferTarget=C's trunk channel, DestType=Bridge). After the join CDR has "
                     "a row 'trunk(A) -> trunk(C) Dial ANSWERED' carrying A+C's talk; 101's "
                     "own leg (trunk(A) -> 101) ends at the join."),
           _exp("in", "79262230026", DID3, True, "101", "ANSWERED", answered_by="101",
                final_extension=None, final_party="79161230026", hangup_by="caller",
                joined_with="79161230026",
                note="C's call: answered by 101 on its second line, then joined with A by 101. "
                     "At the join Asterisk re-links C's trunk channel to A's Linkedid (events "
                     "after the AttendedTransfer and the Master.csv linkedid column of C's row "
                     "carry A's linkedid), so a tracker grouping by the final Linkedid merges "
                     "the two calls into one. Its own CDR row (trunk(C) -> 101) ends at the join; "
                     "C's talk with A is on A's CDR row. linkedid here = C's original Linkedid.")],
    "27": [_exp("out", "79031112233", None, False, "101", "BUSY", hangup_by="pbx",
                via="AMI Originate click-to-call (Channel=PJSIP/101, Exten=79031112233, "
                    "CallerID=79031112233)",
                note="101 answered the Originate leg (its channel is Up; 101's CDR row 'Hangup' "
                     "is ANSWERED), but the outside number returned 486: no outside party was "
                     "connected, so the call is not answered; disposition BUSY (the trunk Dial "
                     "row).")],
    "28": [_exp("in", n, d, True, "104", "ANSWERED", hangup_by="caller") for n, d in BURST28_A] +
          [_exp("in", n, d, True, "103", "ANSWERED", hangup_by="agent") for n, d in BURST28_B] +
          [_exp("in", n, d, False, None, "NO ANSWER", rang=["105"], hangup_by="caller")
           for n, d in BURST28_C],
    "29": [_exp("in", "79161110001", DID1, True, "101", "ANSWERED", hangup_by="caller",
                ami_visibility="session 1 (start, answer) and session 2 (CoreShowChannel Up, "
                               "Hangup, Cdr): spans the gap"),
           _exp("in", "79161110002", DID2, True, "102", "ANSWERED", hangup_by="agent",
                ami_visibility="session 1 only (start, answer); its end and Cdr fell into the gap",
                note="Ended during the AMI gap: no Hangup/Cdr on AMI; Master.csv has it."),
           _exp("in", "79161110003", DID3, True, "103", "ANSWERED", hangup_by="caller",
                ami_visibility="none: the whole call happened during the gap",
                note="Never visible on AMI (start, answer, end and Cdr all inside the gap); "
                     "only Master.csv (and a CDR backfill) has it; event timings are null."),
           _exp("in", "79161110004", DID_BURST_B, False, None, "NO ANSWER", rang=["105"],
                hangup_by="caller",
                ami_visibility="session 2 only: CoreShowChannel (trunk Ring, 105 Ringing) then "
                               "Hangup and Cdr; its Newchannel/DialBegin fell into the gap",
                note="Started during the gap: first seen in the CoreShowChannels answer of "
                     "session 2; event timings are null because Newchannel was not seen."),
           _exp("in", "79161110005", DID_BURST_A, True, "104", "ANSWERED", hangup_by="caller",
                ami_visibility="session 2 only: the whole call after the reconnect")],
})


# ---- lab: ground truth for the chan_sip set 41..59 (Asterisk 20, extensions 201..205) ----
EXPECT.update({
    "41": [_exp("in", "79161234567", DID1, True, "201", "ANSWERED", hangup_by="caller")],
    "42": [_exp("in", "79161234567", DID1, False, None, "NO ANSWER", rang=["201"],
                hangup_by="caller")],
    "43": [_exp("in", "79853334455", DID1, False, None, "BUSY", rang=["201"])],
    "44": [_exp("in", "79161234567", DID1, True, "202", "ANSWERED", rang=["201", "202"],
                via="ring group (Local channels)", hangup_by="caller")],
    "45": [_exp("in", "79031234455", DID3, True, "202", "ANSWERED", rang=["201", "202"],
                via="queue support", hangup_by="caller",
                note="PBX answers the trunk channel before any agent (Answer+Queue): CDR billsec "
                     "counts from that PBX answer, so the CDR ring is 0; the agent really "
                     "answered ~4.5 s after arrival (ring_seconds_events).")],
    "46": [_exp("out", "79031112233", None, True, "201", "ANSWERED", hangup_by="agent")],
    "47": [_exp("out", "79031112233", None, False, "201", "NO ANSWER", hangup_by="agent")],
    "48": [_exp("in", "79161234567", DID1, True, "201", "ANSWERED", final_extension="202",
                transfers=[{"from": "201", "to": "202", "kind": "blind"}],
                transfer="blind (AMI BlindTransfer) 201 -> 202", hangup_by="caller")],
    "49": [_exp("in", "79161234567", DID1, True, "201", "ANSWERED", final_extension="203",
                transfers=[{"from": "201", "to": "203", "kind": "attended"}],
                transfer="attended (AMI Atxfer, feature *2) 201 -> 203", hangup_by="caller")],
    "50": [_exp("out", "79031112233", None, True, "201", "ANSWERED", hangup_by="external",
                via="AMI Originate click-to-call (Channel=SIP/150010001, Exten=79031112233, "
                    "CallerID=79031112233)",
                note="The PBX first rings 201 (the Originate leg SIP/150010001-...), then dials "
                     "the trunk; Cdr Source is 79031112233 because Originate set CallerID to the "
                     "dialled number.")],
    "51": [_exp("internal", None, None, True, "202", "ANSWERED", from_extension="201",
                note="internal call; no external party")],
    "52": [_exp("in", "79161230052", DID1, True, "202", "ANSWERED", rang=["201"],
                answered_by="202", final_extension="202", hangup_by="agent",
                via="directed pickup: 202 dialled *8201 -> PickupChan(SIP/150010001)",
                pickup={"by": "202", "ringing": "201", "kind": "directed"},
                note="Answered by the picker 202. The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "Here: trunk -> SIP/150010001 NO ANSWER (duration 0), trunk -> "
                     "SIP/150010002 ANSWERED with the talk; 201's channel has its own row '201 -> *8201 NO ANSWER'. 202's channel "
                     "starts with its own Linkedid and takes the trunk's after the Pickup.")],
    "53": [_exp("in", "79161230053", DID1, True, "202", "ANSWERED", rang=["201"],
                answered_by="202", final_extension="202", hangup_by="agent",
                via="group pickup: 202 dialled *8 (chan_sip pickupexten)",
                pickup={"by": "202", "ringing": "201", "kind": "group"},
                note="Answered by the picker 202. The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "Here: trunk -> SIP/150010001 NO ANSWER, trunk -> SIP/150010002 ANSWERED; 201's own row '201 -> *8 NO ANSWER'.")],
    "54": [_exp("in", "79161230054", DID2, True, "201", "ANSWERED", rang=["201", "79990001122"],
                answered_by="201", final_extension="201", forwarded_to="79990001122",
                hangup_by="caller",
                via="forward on no answer to the mobile of 201 (Dial SIP/trunk/... U(confirm))",
                note="ONE inbound call (the outbound SIP/trunk-... leg to the mobile is on the "
                     "same Linkedid). Answered: the mobile accepted with DTMF 1 (SIP INFO, "
                     "DTMFEnd on the mobile leg). extension/answered_by = 201 (whose forward it "
                     "is); forwarded_to = who talked. CDR: trunk -> 201 NO ANSWER, trunk -> "
                     "trunk(mobile) ANSWERED with AnswerTime = the mobile's 200 OK.")],
    "55": [_exp("in", "79161230055", DID2, False, None, "NO ANSWER",
                rang=["201", "79990001122"], forwarded_to="79990001122", hangup_by="pbx",
                via="forward to the mobile; mobile answered but did not accept",
                note="NOT answered: the mobile's channel went Up but it never pressed 1; "
                     "READSTATUS=TIMEOUT, GOSUB_RESULT=CONTINUE; DialEnd DialStatus=CONTINUE, "
                     "DIALSTATUS=ANSWER; the caller's channel never left state Ring and got "
                     "Hangup(19). CDR: trunk -> 201 NO ANSWER, trunk -> mobile FAILED, Hangup "
                     "NO ANSWER.")],
    "56": [_exp("in", "79161230056", DID1, True, "201", "ANSWERED", answered_by="201",
                final_extension="202", hangup_by="caller",
                transfers=[{"from": "201", "to": "202", "kind": "attended"}],
                via="blonde transfer: Atxfer to 202, 201 hung up while 202 was ringing",
                note="Blonde transfer (target still ringing when the transferer hung up). The "
                     "CDR row trunk -> Local/202@from-internal;1 is ANSWERED from the start of "
                     "the consultation, so its billsec includes 202's ringing.")],
    "57": [_exp("in", "79161230057", DID1, True, "201", "ANSWERED", answered_by="201",
                final_extension=None, final_party="79262230057",
                hangup_by="other outside party",
                transfers=[{"from": "201", "to": "79262230057", "kind": "attended"}],
                via="201 joined A with C (REFER with Replaces = attended transfer)",
                note="A's call: answered by 201, held, then joined with C by 201's REFER/Replaces "
                     "(AttendedTransfer: Transferee=A's trunk, TransferTarget=C's trunk). CDR: "
                     "a row trunk(A) -> trunk(C) ANSWERED carries A+C's talk."),
           _exp("in", "79262230057", DID3, True, "201", "ANSWERED", answered_by="201",
                final_extension=None, final_party="79161230057", hangup_by="caller",
                joined_with="79161230057",
                note="C's call: answered by 201 on its second line, then joined with A. After the "
                     "join C's trunk channel carries A's Linkedid (and so does C's Master.csv "
                     "row); linkedid here = C's original one.")],
    "58": [_exp("out", "79031112233", None, False, "201", "BUSY", hangup_by="pbx",
                via="AMI Originate click-to-call (Channel=SIP/150010001, Exten=79031112233)",
                note="201 answered the Originate leg (its CDR 'Hangup' row is ANSWERED) but the "
                     "outside number returned 486: not answered, disposition BUSY.")],
    "59": [_exp("in", "79161230059", DID1, True, "202", "ANSWERED", rang=["201"],
                answered_by="202", final_extension="202", hangup_by="agent",
                via="pickup by INVITE with Replaces (chan_sip)",
                pickup={"by": "202", "ringing": "201", "kind": "replaces"},
                note="Answered by 202. chan_sip turns the INVITE/Replaces of a ringing dialog into "
                     "a pickup: a Pickup event IS emitted (PJSIP emits none, scenario 22); 202's "
                     "channel is created with Exten=150010001 (the account in the R-URI), not "
                     "201. The CDR row trunk -> the ringing phone is NOT stable between runs of the same scenario (seen: ANSWERED with billsec 0 although that phone never answered; NO ANSWER with duration 0 or 3; FAILED for Replaces on PJSIP): see cdr_records for this recording. "
                     "Here: trunk -> SIP/150010001 NO ANSWER (duration 0), trunk -> "
                     "SIP/150010002 ANSWERED.")],
})


def parse_ami(raw, timing, use_wallclock=False):
    """Split a raw AMI capture into messages with arrival time (seconds since connect, or
    wallclock with use_wallclock=True)."""
    key = "wallclock" if use_wallclock else "t"
    chunks = [(c["offset"] + c["len"], c[key]) for c in timing]

    def t_at(end):
        for stop, t in chunks:
            if end <= stop:
                return t
        return chunks[-1][1]
    msgs = []
    pos = raw.index(b"\r\n") + 2          # skip banner line
    while True:
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        block = raw[pos:end].decode("utf-8", "replace")
        d = {}
        for line in block.split("\r\n"):
            k, _, v = line.partition(": ")
            if k not in d:
                d[k] = v
        d["_t"] = t_at(end + 4)
        msgs.append(d)
        pos = end + 4
    return msgs


PHONE_RE = re.compile(r"^(?:PJSIP|Local)/(1\d\d)\b")
TRUNK_RE = re.compile(r"^(?:PJSIP|SIP)/trunk-")
DEV_RE = re.compile(r"^(?:PJSIP|SIP)/([^-/@;]+)-[0-9a-f]+$")
LOCAL_RE = re.compile(r"^Local/(\d+)@")


def chan_ext(name):
    """Extension of a phone channel (PJSIP/101-..., SIP/150010001-..., Local/102@...)."""
    if not name:
        return None
    m = DEV_RE.match(name)
    if m and m.group(1) in DEVICE_EXT:
        return DEVICE_EXT[m.group(1)]
    m = LOCAL_RE.match(name)
    if m and (m.group(1) in DEVICE or m.group(1) in DEVICE_EXT):
        return DEVICE_EXT.get(m.group(1), m.group(1))
    return None


def is_phone(name):
    m = DEV_RE.match(name or "")
    return bool(m and m.group(1) in DEVICE_EXT)


def read_cdr_csv(path):
    """Master.csv rows (cdr_csv with loguniqueid, loguserfield, newcdrcolumns) as dicts
    using the AMI Cdr event's key names."""
    import csv
    if not os.path.exists(path):
        return None
    out = []
    names = {"src": "Source", "dst": "Destination", "dcontext": "DestinationContext",
             "clid": "CallerID", "channel": "Channel", "dstchannel": "DestinationChannel",
             "lastapp": "LastApplication", "lastdata": "LastData", "start": "StartTime",
             "answer": "AnswerTime", "end": "EndTime", "duration": "Duration",
             "billsec": "BillableSeconds", "disposition": "Disposition",
             "uniqueid": "UniqueID", "linkedid": "LinkedID", "sequence": "Sequence"}
    for row in csv.reader(open(path, newline="")):
        r = dict(zip(CDR_CSV_COLUMNS, row))
        out.append({names[k]: r.get(k, "") for k in names})
    return out


CDR_KEYS = ("Source", "Destination", "Channel", "DestinationChannel", "LastApplication",
            "StartTime", "AnswerTime", "EndTime", "Duration", "BillableSeconds", "Disposition",
            "UniqueID")


def session_files(path):
    """The .ami file of a scenario plus its after-reconnect session, if any."""
    files = [path]
    s2 = re.sub(r"\.ami$", "", path) + ".session2.ami"
    if os.path.exists(s2):
        files.append(s2)
    return files


def analyze_file(path):
    msgs = []
    for f in session_files(path):
        raw = open(f, "rb").read()
        timing = [json.loads(l) for l in open(re.sub(r"\.ami$", "", f) + ".timing.jsonl")]
        msgs += parse_ami(raw, timing, use_wallclock=True)
    chans = {}            # uniqueid -> info
    groups = {}           # linkedid at creation -> [uniqueid]
    bridges = {}          # bridge id -> set of uniqueids
    cdrs = []
    for m in msgs:
        ev = m.get("Event")
        uid = m.get("Uniqueid")
        if ev in ("Newchannel", "CoreShowChannel") and uid not in chans:
            chans[uid] = {"name": m["Channel"], "linkedid": m["Linkedid"],
                          "linkedid0": m["Linkedid"],
                          "t_new": m["_t"] if ev == "Newchannel" else None,
                          "context": m["Context"], "exten": m["Exten"],
                          "cid": m["CallerIDNum"], "t_up": None, "t_hangup": None,
                          "t_connected": None, "seen_as": ev}
            chans[uid]["t_seen"] = m["_t"]
            if ev == "CoreShowChannel" and m.get("ChannelStateDesc") == "Up":
                chans[uid]["t_up"] = m["_t"]
            groups.setdefault(m["Linkedid"], []).append(uid)
            continue
        if uid in chans:
            c = chans[uid]
            if m.get("Linkedid"):
                c["linkedid"] = m["Linkedid"]
            if ev == "Rename":
                c["name"] = m.get("Newname", c["name"])
            elif ev == "Newstate" and m.get("ChannelState") == "6" and c["t_up"] is None:
                c["t_up"] = m["_t"]
            elif ev == "Hangup":
                c["t_hangup"] = m["_t"]
            elif ev == "BridgeEnter":
                members = bridges.setdefault(m["BridgeUniqueid"], set())
                members.add(uid)
                if len(members) >= 2:
                    for u in members:
                        if chans.get(u) and chans[u]["t_connected"] is None:
                            chans[u]["t_connected"] = m["_t"]
            elif ev == "BridgeLeave":
                bridges.setdefault(m["BridgeUniqueid"], set()).discard(uid)
        if ev == "Cdr":
            cdrs.append(m)
    # a channel created with its own linkedid that later joined another call (a pickup by
    # *8 / Replaces: the picker's channel) belongs to that call, if its group has no trunk
    for lid in list(groups):
        uids = groups[lid]
        if any(TRUNK_RE.match(chans[u]["name"]) for u in uids):
            continue
        new = {chans[u]["linkedid"] for u in uids} - {lid}
        if len(new) == 1 and list(new)[0] in groups:
            groups[list(new)[0]] += uids
            del groups[lid]
    csv_rows = read_cdr_csv(re.sub(r"\.ami$", "", path) + ".cdr.csv")
    calls = []
    for lid, uids in groups.items():
        cs = [chans[u] for u in uids]
        trunk_in = [chans[u] for u in uids if TRUNK_RE.match(chans[u]["name"]) and u == lid]
        trunk_out = [chans[u] for u in uids if TRUNK_RE.match(chans[u]["name"]) and u != lid]
        phones = [c for c in cs if is_phone(c["name"])]
        if csv_rows is not None:
            gc = [d for d in csv_rows if d["UniqueID"] in uids]
        else:
            gc = [d for d in cdrs if d.get("UniqueID") in uids]
        call = {"linkedid": lid, "cdr": [dict({k: d.get(k) for k in CDR_KEYS},
                                              **({"LinkedID": d["LinkedID"]} if "LinkedID" in d
                                                 else {})) for d in gc]}
        call["uniqueids"] = list(uids)
        if trunk_in:
            tr = trunk_in[0]
            call.update(direction="in", external_number=tr["cid"],
                        did=tr["exten"] if tr["seen_as"] == "Newchannel" else None)
            legs = [d for d in gc if d["Channel"] == tr["name"] and d["DestinationChannel"]]
            t_ans = tr["t_connected"]
            t0, t1 = tr["t_new"], tr["t_hangup"]
        elif trunk_out:
            tr = trunk_out[0]
            ph = [c for c in phones if c["t_new"] is None or tr["t_new"] is None
                  or c["t_new"] <= tr["t_new"]]
            call.update(direction="out", external_number=None, did=None,
                        extension=chan_ext(ph[0]["name"]) if ph else None)
            legs = [d for d in gc if TRUNK_RE.match(d["DestinationChannel"])]
            if legs:
                call["external_number"] = legs[0]["Destination"]
            t_ans, t0, t1 = tr["t_up"], tr["t_new"], tr["t_hangup"]
        else:
            ph = sorted(phones, key=lambda c: c["t_new"] or 0)
            call.update(direction="internal", external_number=None, did=None)
            legs = [d for d in gc if d["DestinationChannel"]]
            t0 = ph[0]["t_new"] if ph else None
            t1 = ph[0]["t_hangup"] if ph else None
            t_ans = ph[1]["t_up"] if len(ph) > 1 else None
        answered_legs = [d for d in legs if d["Disposition"] == "ANSWERED"]
        if answered_legs:
            first = sorted(answered_legs, key=lambda d: (d["StartTime"], d["UniqueID"]))[0]
            call["answered_cdr"] = True
            call["cdr_ring_seconds"] = int(first["Duration"]) - int(first["BillableSeconds"])
            call["cdr_talk_seconds"] = sum(int(d["BillableSeconds"]) for d in answered_legs)
            call["cdr_disposition"] = "ANSWERED"
            if call["direction"] == "in":
                call["answered_by_cdr"] = chan_ext(first["DestinationChannel"])
                last = sorted(answered_legs, key=lambda d: (d["StartTime"], d["UniqueID"]))[-1]
                call["final_extension_cdr"] = chan_ext(last["DestinationChannel"])
        else:
            call["answered_cdr"] = False
            call["cdr_ring_seconds"] = max([int(d["Duration"]) for d in legs] or [0])
            call["cdr_talk_seconds"] = 0
            call["cdr_disposition"] = legs[-1]["Disposition"] if legs else None
            # a non-Dial record after the Dial (Busy(), Congestion(), Hangup()) keeps
            # the Dial's disposition for our purposes
            dial_legs = [d for d in legs if d["LastApplication"] in ("Dial", "Queue")]
            if dial_legs:
                call["cdr_disposition"] = dial_legs[0]["Disposition"] \
                    if len(dial_legs) == 1 else dial_legs[-1]["Disposition"]
        call["answered_events"] = t_ans is not None
        if t0 is None:
            call["ring_seconds_events"] = None
            call["talk_seconds_events"] = None
        elif t_ans is not None:
            call["ring_seconds_events"] = round(t_ans - t0, 2)
            call["talk_seconds_events"] = round(t1 - t_ans, 2) if t1 else None
        else:
            call["ring_seconds_events"] = round(t1 - t0, 2) if t1 else None
            call["talk_seconds_events"] = 0.0
        call["_t0"] = t0 if t0 is not None else min(c["t_seen"] for c in cs)
        calls.append(call)
    # calls only in Master.csv (their whole life fell into an AMI gap)
    if csv_rows:
        seen = {u for c in calls for u in c["uniqueids"]}
        extra = {}
        for d in csv_rows:
            if d["UniqueID"] not in seen:
                extra.setdefault(d["LinkedID"], []).append(d)
        for lid, rows in extra.items():
            first = sorted(rows, key=lambda d: d["StartTime"])[0]
            inbound = TRUNK_RE.match(first["Channel"]) is not None
            legs = [d for d in rows if d["DestinationChannel"]]
            ans = [d for d in legs if d["Disposition"] == "ANSWERED"]
            call = {"linkedid": lid, "uniqueids": sorted({d["UniqueID"] for d in rows}),
                    "cdr": [dict({k: d.get(k) for k in CDR_KEYS}, LinkedID=d["LinkedID"])
                            for d in rows],
                    "direction": "in" if inbound else "out",
                    "external_number": first["Source"] if inbound else first["Destination"],
                    "did": None, "answered_cdr": bool(ans),
                    "cdr_disposition": "ANSWERED" if ans else (legs[0]["Disposition"]
                                                               if legs else None),
                    "cdr_ring_seconds": (int(ans[0]["Duration"]) - int(ans[0]["BillableSeconds"])
                                         if ans else max([int(d["Duration"]) for d in legs]
                                                         or [0])),
                    "cdr_talk_seconds": sum(int(d["BillableSeconds"]) for d in ans),
                    "answered_by_cdr": chan_ext(ans[0]["DestinationChannel"]) if ans else None,
                    "final_extension_cdr": chan_ext(ans[-1]["DestinationChannel"]) if ans
                    else None,
                    "answered_events": None, "ring_seconds_events": None,
                    "talk_seconds_events": None, "only_in_cdr_csv": True, "_t0": 1e12}
            calls.append(call)
    calls.sort(key=lambda c: c["_t0"])
    counts = {}
    for m in msgs:
        if "Event" in m:
            counts[m["Event"]] = counts.get(m["Event"], 0) + 1
    return calls, counts


def build_manifest(outdir):
    manifest = {"about": ABOUT[PROFILE],
                "generator": "record.py (real Asterisk, %s channels, sipp) - lab copy" % TECH,
                "cdr_csv_columns": CDR_CSV_COLUMNS,
                "scenarios": []}
    total_counts = {}
    problems = []
    for key, desc, fn in SCENARIOS:
        path = os.path.join(outdir, key + ".ami")
        if not os.path.exists(path):
            continue
        calls, counts = analyze_file(path)
        for k, v in counts.items():
            total_counts[k] = total_counts.get(k, 0) + v
        exp = list(EXPECT[key.split("-")[0]])
        out_calls = []
        for c in calls:
            # match expected call by direction + external number (first unused)
            e = None
            for i, x in enumerate(exp):
                if x["direction"] == c["direction"] and \
                        (x["external_number"] == c["external_number"]):
                    e = exp.pop(i)
                    break
            if e is None:
                problems.append("%s: unexpected call %s (%s %s)" % (
                    key, c["linkedid"], c["direction"], c["external_number"]))
                continue
            gt = dict(e)
            gt.setdefault("answered_by", e["extension"] if e["direction"] != "out" else None)
            if e["direction"] == "in" and e["answered"]:
                gt.setdefault("final_extension", e["extension"])
            gt["ring_seconds"] = c["cdr_ring_seconds"]
            gt["talk_seconds"] = c["cdr_talk_seconds"]
            gt["ring_seconds_events"] = c["ring_seconds_events"]
            gt["talk_seconds_events"] = c["talk_seconds_events"]
            gt["linkedid"] = c["linkedid"]
            if c.get("only_in_cdr_csv"):
                gt["only_in_cdr_csv"] = True
            gt["cdr_records"] = c["cdr"]
            # consistency checks against what Asterisk itself reported
            hand = []
            if c["cdr_disposition"] != e["disposition"]:
                hand.append("disposition cdr=%s truth=%s" % (c["cdr_disposition"],
                                                              e["disposition"]))
            if c["answered_cdr"] != e["answered"]:
                hand.append("answered cdr=%s truth=%s" % (c["answered_cdr"], e["answered"]))
            if e["direction"] == "in":
                if c["did"] is not None and c["did"] != e["did"]:
                    hand.append("did %s != %s" % (c["did"], e["did"]))
                if e["answered"] and c.get("answered_by_cdr") != gt["answered_by"]:
                    hand.append("answered_by cdr=%s truth=%s" % (c.get("answered_by_cdr"),
                                                                  gt["answered_by"]))
                if e["answered"] and c.get("final_extension_cdr") != gt["final_extension"]:
                    hand.append("final ext cdr=%s truth=%s" % (c.get("final_extension_cdr"),
                                                                gt["final_extension"]))
            if e["direction"] == "out" and c.get("extension") != e["extension"]:
                hand.append("out ext events=%s truth=%s" % (c.get("extension"), e["extension"]))
            if c["answered_events"] is not None and c["answered_events"] != e["answered"]:
                hand.append("answered(events: a trunk channel bridged with another channel)"
                            "=%s truth=%s" % (c["answered_events"], e["answered"]))
            if hand:
                gt["cdr_disagreement"] = hand
                if "note" not in e:
                    problems.append("%s %s: NO NOTE for %s" % (key, c["linkedid"], hand))
                for h in hand:
                    problems.append("%s %s: %s (hand-checked, see note)" % (
                        key, c["linkedid"], h))
            out_calls.append(gt)
        for x in exp:
            problems.append("%s: expected call not found: %s" % (key, x))
        sc = {"file": key + ".ami", "timing_file": key + ".timing.jsonl",
              "cdr_csv_file": key + ".cdr.csv",
              "description": desc, "n_calls": len(out_calls),
              "event_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
              "calls": out_calls}
        s2 = re.sub(r"\.ami$", "", path) + ".session2.ami"
        if os.path.exists(s2):
            sc["session2_file"] = os.path.basename(s2)
            sc["session2_timing_file"] = os.path.basename(s2)[:-4] + ".timing.jsonl"
            gap = re.sub(r"\.ami$", "", path) + ".gap.json"
            if os.path.exists(gap):
                sc["gap"] = json.load(open(gap))
        if key.split("-")[0] in SCENARIO_NOTES:
            sc["note"] = SCENARIO_NOTES[key.split("-")[0]]
        manifest["scenarios"].append(sc)
    manifest["event_counts_total"] = dict(sorted(total_counts.items(), key=lambda kv: -kv[1]))
    manifest["consistency_problems"] = problems
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    return manifest, problems


ABOUT = {
    "pjsip": "Real AMI recordings from Asterisk 22.10.1 (PJSIP, real SIP calls made by sipp on "
             "loopback, timestampevents=yes, cdr_manager + cdr_csv loaded). Each NN-name.ami "
             "holds the raw bytes of one AMI session (NN-name.timing.jsonl: arrival time of each "
             "chunk, t since connect and wallclock); NN-name.cdr.csv holds the Master.csv rows "
             "written during the scenario (columns: cdr_csv_columns). calls lists what a correct "
             "tracker must report (hand-checked; 'note' explains where Asterisk's own CDR "
             "disagrees, cdr_disagreement lists the differences). ring/talk *_events are measured "
             "from the events (answer = the first moment the external party's trunk channel is "
             "in a bridge with another channel; outbound: the trunk leg goes Up); ring_seconds / "
             "talk_seconds are the CDR figures.",
    "chansip": "Real AMI recordings from Asterisk 20.20.1 with chan_sip (PJSIP not loaded), phones "
               "are SIP peers named by account (150010001..150010005, callerid \"Office 20N\" "
               "<20N>, extensions 201..205 in the dialplan), trunk peer 'trunk' at "
               "127.0.0.2:5070; real SIP calls by sipp on loopback; timestampevents=yes, "
               "cdr_manager + cdr_csv. File layout and fields as in the PJSIP set. The trunk "
               "channel of an inbound call is created in state Down (Newchannel ChannelState 0, "
               "Exten = the DID) and moves to Ring right away (Newstate 4); with PJSIP the "
               "Newchannel is already in state Ring.",
}

SCENARIO_NOTES = {
    "28": "One continuous AMI session; 50 calls with unique external numbers; ring/talk "
          "durations are random (uniform) per call, so take them from ring_seconds_events / "
          "talk_seconds_events (or the CDR figures) of each call.",
    "29": "Two AMI sessions: 'file' holds session 1 (banner, Login, events until the recorder "
          "closed its socket), 'session2_file' holds session 2 (banner, Login response, the "
          "CoreShowChannels answer with ActionID rec-resync: CoreShowChannel events + "
          "CoreShowChannelsComplete, then live events). 'gap' gives the wallclock of the close and "
          "of the reconnect (timing files have wallclock per chunk). Events of the gap are lost; "
          "Master.csv (cdr_csv_file) has every call. Calls whose Newchannel was not seen have "
          "null event timings; a call seen only in Master.csv has only_in_cdr_csv=true.",
}


CURRENT = {}   # the current scenario's Recorder (scenario 29 replaces it on reconnect)


def cdr_truncate():
    """Empty Master.csv before a scenario (cdr_csv opens it in append mode per record)."""
    if os.path.exists(CDR_CSV):
        open(CDR_CSV, "w").close()


def cdr_copy(dest):
    """Copy the scenario's Master.csv rows next to its trace; returns the row count."""
    data = open(CDR_CSV, "rb").read() if os.path.exists(CDR_CSV) else b""
    with open(dest, "wb") as f:
        f.write(data)
    return data.count(b"\n")


async def run(outdir, only):
    os.makedirs(outdir, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    drv = Driver()
    await drv.connect()
    results = {}
    for key, desc, fn in SCENARIOS:
        if only and not any(key.startswith(p) for p in only):
            continue
        print("== %s" % key, flush=True)
        await drv.wait_idle()
        path = os.path.join(outdir, key + ".ami")
        # make sure routing is in place before the recorder connects
        for did, route in ROUTES[key].items():
            await drv.set_route(did, route)
        await asyncio.sleep(1.0)   # let the global VarSet event pass before recording
        rec = Recorder(path)
        CURRENT["rec"] = rec
        CURRENT["path"] = path
        del ACTIVE[:]
        procs = ACTIVE
        cdr_truncate()
        try:
            await rec.start()
            await asyncio.sleep(1.0)
            t0 = time.time()
            rcs = await fn(drv)
            await asyncio.sleep(1.0)
            idle = await drv.wait_idle(60)
            if not idle:
                # a failed sipp left channels up: clear them so the next scenario starts clean
                print("   WARNING: channels left after the scenario; hanging them up", flush=True)
                await drv.action("Hangup", Channel="/.*/")
                await drv.wait_idle(10)
                await asyncio.sleep(35)   # let the PBX's BYE retransmissions (timer F) die out
            await asyncio.sleep(2.0)   # trailing Cdr / Hangup events
        finally:
            await CURRENT["rec"].stop()
            for p in procs:
                p.stop()
        n_cdr = cdr_copy(os.path.join(outdir, key + ".cdr.csv"))
        print("   Master.csv rows: %d" % n_cdr, flush=True)
        uas_rc = [p.proc.returncode for p in procs if p.proc]
        print("   uac rc=%s all rc=%s idle=%s %.1fs" % (rcs, uas_rc, idle, time.time() - t0),
              flush=True)
        results[key] = {"desc": desc, "uac_rc": rcs, "rc": uas_rc}
    with open(os.path.join(WORK, "run-results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "--manifest":
        m, probs = build_manifest(sys.argv[2])
        print("scenarios:", len(m["scenarios"]), "problems:", len(probs))
        for p in probs:
            print("  ", p)
    else:
        asyncio.run(run(sys.argv[1], sys.argv[2:]))
