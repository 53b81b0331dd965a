"""End to end: PBX simulator -> ``telefum listen`` -> Redis -> ``telefum worker`` x N -> CRM.

For each CRM latency (the reference CRM's ``--latency-ms``) and number of worker processes,
calls are played at rising rates (a ladder of steps, ``--step-s`` seconds of calls each) and
every played call is looked for in the CRM's own SQLite file afterwards:

- zero loss: every played call's event is stored, exactly once (the event's description
  carries the call id: the bench's ``[worker] description`` template adds it);
- latency: from the call's last hangup to its event being stored. The hangup time is the
  call record's ``ended_at`` (the AMI ``Timestamp`` of the last hangup, from the ledger in
  Redis), the storing time the event's ``created_at`` (the reference CRM writes it to the
  millisecond).

A step *holds* when all its calls arrived once each and p99 < 1 s. Each setting's figure is
the highest rate held with every lower step held too.

How the PBX side is played, and why: the synthetic mix (``pbxsim.synth``, a realistic
mix of recorded calls, ~100 AMI events per call) costs ~20 us per event to generate and
encode, about half a core at 200 calls/s on this machine, where a real PBX is another
machine. So the whole ladder is generated and encoded once, before anything is measured,
dated from a fixed time in the future, and then played in 10 ms slots paced on the wall
clock through the simulator's raw ``inject``. The ladder's time ``t`` goes out at wall time
``W + t``, so a hangup stamped ``BASE_TIME + t`` happened at ``W + t``: latency is
``created_at - (ended_at - BASE_TIME + W)``. How late the pacing ran is measured and
reported (``pbx_lag_p99_s``) since a late PBX makes calls look slower, never faster.

Steps follow each other without a pause, and what the pipeline sees is hangups: a call
(0-22 s long) started in one step often hangs up in the next. So each step is measured in
its *second half*: latency, CPU and ``hangup_rate`` (the load measured) are those of the
calls that hung up between the middle and the end of the step, when the step's rate has run
long enough for its calls to be most of those ending (the mix's median call is 7 s) and the
next, faster step has not begun (the last step's window runs on to the end: its calls hang
up after the ladder stops). Zero loss is checked for every played call, each in the step
during which it hung up. The ladder stops early once, at the end of a step, more than a
tenth of a second's calls had hung up over a second before and were still not in the CRM.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import machine_info, write_results
from pbxsim import synth
from pbxsim.server import PbxSimulator
from telephony.ami import encode
from worker import keys
from worker.embedded_redis import EmbeddedRedis, _die_with_parent
from worker.stats import COUNTERS, read_stats

NAME = "e2e"
REPO = Path(__file__).resolve().parents[1]

RATES = (50, 100, 150, 200, 250, 300)  # calls per second
LATENCIES_MS = (0, 50, 200)
WORKERS = (1, 2)
STEP_S = 20.0
MEASURE_FROM = 0.5  # a step is measured from this share of its time to its end
SEED = 11
P99_LIMIT_S = 1.0
LATE_LIMIT = 0.1  # stop the ladder when more than this share of a second's calls is late
DRAIN_TIMEOUT_S = 60.0
TARGET = {"crm_latency_ms": 50, "workers": 2, "calls_per_s": 200, "p99_s": P99_LIMIT_S}

# --quick (the smoke test): one short step; seed 17's 20 calls hold no 14-22 s transfer
# recording, so the tail after the last call starts is ~10 s and the run fits in ~25 s.
QUICK: dict[str, Any] = {
    "rates": (10,),
    "latencies": (0,),
    "workers": (1,),
    "step_s": 2.0,
    "seed": 17,
}

BASE_TIME = synth.DEFAULT_BASE_TIME  # in the future: the listener never sees a call as stale
SLOT_S = 0.01
PASSWORD = secrets.token_urlsafe(9)
PBX_SECRET = secrets.token_urlsafe(9)
CALL_ID_IN_DESC = re.compile(r"call_id=(\S+)")


# --- the PBX side: the ladder, generated once ---------------------------------------------


@dataclass
class StepStream:
    """One step of the ladder, encoded: (seconds from the ladder's start, bytes) slots."""

    rate: float
    call_ids: list[str]
    expected: set[str]  # calls with an outside number: each must become one CRM event
    slots: list[tuple[float, bytes]]
    messages: int
    ends: list[float]  # when each call's last event goes out, seconds from the ladder's start
    end_of: dict[str, float]  # the same per call id


def build_ladder(rates: tuple[float, ...], step_s: float, seed: int) -> list[StepStream]:
    templates = synth.load_templates()
    spans = {t.name: t.id_high for t in templates}
    lengths = {t.name: t.offsets[-1] for t in templates}
    first_id = 1000
    out = []
    for k, rate in enumerate(rates):
        n = max(1, round(rate * step_s))
        base = BASE_TIME + k * step_s
        calls = synth.plan(n, rate, seed + k, base_time=base, first_id=first_id)
        slots: dict[int, list[bytes]] = {}
        count = 0
        for t, msg in synth.generate(n, rate, seed + k, base_time=base, first_id=first_id):
            slots.setdefault(int((k * step_s + t) / SLOT_S), []).append(encode(msg))
            count += 1
        first_id = 1 + max(c.id_offset + spans[c.template] for c in calls)
        out.append(
            StepStream(
                rate=rate,
                call_ids=[c.call_id for c in calls],
                expected={c.call_id for c in calls if c.facts.get("external")},
                slots=[(i * SLOT_S, b"".join(parts)) for i, parts in sorted(slots.items())],
                messages=count,
                ends=sorted(k * step_s + c.start + lengths[c.template] for c in calls),
                end_of={c.call_id: k * step_s + c.start + lengths[c.template] for c in calls},
            )
        )
    return out


async def play_step(sim: PbxSimulator, step: StepStream, wall0: float, lags: list[float]) -> None:
    """Send the step's slots at ``wall0 + t``; how late each went out goes to ``lags``."""
    for t, data in step.slots:
        delay = wall0 + t - time.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.time() - (wall0 + t)))
        await sim.inject(data)


# --- the parts, as processes ---------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def settings_text(work: Path, pbx_port: int, redis_url: str, crm_url: str, max_jobs: int) -> str:
    return f"""\
# written by bench/e2e_bench.py
spool_dir = "{work / "spool"}"

[ami]
host = "127.0.0.1"
port = {pbx_port}
username = "telefum"
secret = "{PBX_SECRET}"

[redis]
url = "{redis_url}"

[crm]
url = "{crm_url}"
login = "bridge"
password = "{PASSWORD}"

[worker]
create_contacts_for = ["in", "out"]   # every call of the mix becomes an event
description = "Длительность {{duration}}; номер {{did}}; call_id={{call_id}}"
max_jobs = {max_jobs}

[http]
listen = "127.0.0.1:0"
"""


class Pipeline:
    """Redis, the reference CRM, the simulated PBX, ``telefum listen`` and the workers."""

    def __init__(self, work: Path, crm_latency_ms: float, workers: int, max_jobs: int) -> None:
        self.work = work
        self.crm_latency_ms = crm_latency_ms
        self.n_workers = workers
        self.max_jobs = max_jobs
        self.redis_server: EmbeddedRedis | None = None
        self.redis: Redis | None = None
        self.sim: PbxSimulator | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.crm_db = work / "crm.sqlite"

    async def _spawn(self, name: str, *args: str, stdout: int | None = None) -> Any:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "telefum.cli",
                *args,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=REPO,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.work / f"{name}.log").read_text(errors="replace")[-2000:]
        return ""

    async def start(self) -> None:
        self.redis_server = EmbeddedRedis(self.work / "redis", appendonly=True).start()
        self.redis = Redis.from_url(self.redis_server.url, socket_timeout=10)
        crm = await self._spawn(
            "refcrm",
            "refcrm",
            "--db",
            str(self.crm_db),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency-ms",
            str(self.crm_latency_ms),
            "--user",
            f"bridge:{PASSWORD}",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            line = (await asyncio.wait_for(crm.stdout.readline(), 30)).decode()
            crm_base = line.split(" on ", 1)[1].split()[0]
        except (TimeoutError, IndexError):
            raise RuntimeError(f"refcrm did not start: {self.log_tail('refcrm')}") from None
        self.sim = PbxSimulator(secret=PBX_SECRET, speed=1.0)
        await self.sim.start()
        config = self.work / "settings.toml"
        config.write_text(
            settings_text(
                self.work, self.sim.port, self.redis_server.url, crm_base + "rest", self.max_jobs
            ),
            encoding="utf-8",
        )
        await self._spawn("listen", "listen", "--config", str(config))
        for i in range(self.n_workers):
            await self._spawn(
                f"worker{i + 1}", "worker", "--config", str(config), "--worker-id", f"w{i + 1}"
            )
        await self._until_ready()

    async def _until_ready(self, timeout_s: float = 60.0) -> None:
        assert self.sim is not None and self.redis is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {self.log_tail(name)}")
            beats = [
                await self.redis.exists(f"{keys.PREFIX}stats:worker:w{i + 1}")
                for i in range(self.n_workers)
            ]
            if self.sim.clients >= 1 and all(beats):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(
            "the pipeline did not come up in time: "
            + " | ".join(self.log_tail(n) for n in self.procs)
        )

    def pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {
            "listener": self.procs["listen"].pid,
            "crm": self.procs["refcrm"].pid,
            "redis": self.redis_server.pid if self.redis_server else None,
            "bench_pbx": os.getpid(),
        }
        for i in range(self.n_workers):
            pids[f"worker{i + 1}"] = self.procs[f"worker{i + 1}"].pid
        return pids

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each part, and of the whole machine."""
        out = {name: cpu_seconds(pid) for name, pid in self.pids().items()}
        out["machine"] = machine_busy_seconds()
        return out

    async def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.returncode is None and name != "refcrm":
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            if name == "refcrm":
                continue
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        crm = self.procs.get("refcrm")
        if crm is not None and crm.returncode is None:
            crm.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(crm.wait(), 10)
            except TimeoutError:
                crm.kill()
                await crm.wait()
        if self.sim is not None:
            await self.sim.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.redis_server is not None:
            self.redis_server.stop()


# --- one setting: the ladder, then the figures ---------------------------------------------


@dataclass
class StepResult:
    rate: float  # calls started per second in the step
    hangup_rate: float  # calls that hung up per second in the step's window (the load)
    calls: int  # hung up during the step (each checked for loss)
    measured: int  # of those, the ones latency is measured on (the step's second half)
    expected: int
    stored: int
    missing: int
    duplicates: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    over_1s: int
    pbx_lag_p99_s: float
    late_at_end: int  # calls hung up over 1 s before the step's end, not yet in the CRM
    cpu_cores: dict[str, float]
    # where the time goes: hangup -> in Redis, in Redis -> a worker starts, worker run
    stages_p50_p99_s: dict[str, list[float | None]] = field(default_factory=dict)
    held: bool = False


@dataclass
class RunResult:
    crm_latency_ms: float
    workers: int
    max_jobs: int
    steps: list[StepResult] = field(default_factory=list)
    max_rate_held: float = 0.0  # the step's rate (calls started per second)
    max_hangup_rate_held: float = 0.0  # the load measured in that step's window
    stopped: str = ""
    drain_s: float = 0.0
    crm_request_mean_s: dict[str, float] = field(default_factory=dict)  # as workers saw it


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def crm_events(db: Path) -> tuple[dict[str, list[float]], int]:
    """Call id -> creation times of its events, from the CRM's own file; and events that
    name no call."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute('SELECT "desc", created_at FROM events').fetchall()
    finally:
        conn.close()
    out: dict[str, list[float]] = {}
    unnamed = 0
    for desc, created_at in rows:
        m = CALL_ID_IN_DESC.search(desc)
        if m is None:
            unnamed += 1
            continue
        out.setdefault(m.group(1), []).append(_iso(created_at))
    return out, unnamed


LEDGER_TIMES = ("first_seen", "first_attempt", "done_at", "event_sent_at")


async def ledger_times(redis: Redis) -> dict[str, tuple[float, ...]]:
    """Call id -> (``ended_at`` of its record, then the ledger's enqueue, run start and
    done times), from every ledger entry in Redis."""
    names = [k async for k in redis.scan_iter(match=keys.ledger("*"), count=1000)]
    out: dict[str, tuple[float, ...]] = {}
    for i in range(0, len(names), 500):
        async with redis.pipeline(transaction=False) as p:
            for k in names[i : i + 500]:
                p.hmget(k, ["record", *LEDGER_TIMES])
            for raw, *times in await p.execute():
                if raw and all(times[:3]):
                    record = json.loads(raw)
                    out[record["call_id"]] = (
                        _iso(record["ended_at"]),
                        *(float(t or 0) for t in times),
                    )
    return out


async def run_setting(
    streams: list[StepStream],
    crm_latency_ms: float,
    workers: int,
    *,
    step_s: float,
    max_jobs: int,
    say: Any,
) -> RunResult:
    work = Path(tempfile.mkdtemp(prefix="telefum-e2e-"))
    pipe = Pipeline(work, crm_latency_ms, workers, max_jobs)
    result = RunResult(crm_latency_ms, workers, max_jobs)
    try:
        await pipe.start()
        assert pipe.sim is not None and pipe.redis is not None
        wall0 = time.time() + 0.5
        tasks: list[asyncio.Task[None]] = []
        lags: list[list[float]] = []
        backlog: list[int] = []
        cpu: list[dict[str, float]] = []
        for k, step in enumerate(streams):
            await asyncio.sleep(max(0.0, wall0 + k * step_s - time.time()))
            lags.append([])
            tasks.append(asyncio.create_task(play_step(pipe.sim, step, wall0, lags[-1])))
            await asyncio.sleep(max(0.0, wall0 + (k + MEASURE_FROM) * step_s - time.time()))
            before, t_before = pipe.cpu(), time.time()
            await asyncio.sleep(max(0.0, wall0 + (k + 1) * step_s - time.time()))
            after, span = pipe.cpu(), time.time() - t_before
            cpu.append({n: (after[n] - before[n]) / span for n in after})
            late = await _late_calls(pipe.redis, streams[: k + 1], time.time() - wall0)
            backlog.append(late)
            say(
                f"  {step.rate:5g} calls/s: played {len(step.call_ids)} calls; at the "
                f"step's end {late} hung up over {P99_LIMIT_S:g} s ago, not in the CRM"
            )
            if late > max(10, step.rate * LATE_LIMIT):
                result.stopped = f"{late} calls late after the {step.rate:g} calls/s step"
                break
        await asyncio.gather(*tasks)  # the calls still up hang up
        played = sum(len(s.call_ids) for s in streams[: len(tasks)])
        t_drain = time.monotonic()
        while time.monotonic() - t_drain < DRAIN_TIMEOUT_S:
            stats = await read_stats(pipe.redis)
            if stats["counters"]["enqueued"] >= played and not stats["pending"]:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.2)  # the CRM's last commits, the workers' last latency flush
        result.drain_s = round(time.monotonic() - t_drain, 1)
        for op, outcomes in (await read_stats(pipe.redis))["crm_latency"].items():
            ok = outcomes.get("ok") or {}
            if ok.get("count"):
                result.crm_request_mean_s[op] = round(ok["sum_s"] / ok["count"], 4)
        events, _ = crm_events(pipe.crm_db)
        ended = await ledger_times(pipe.redis)
        played_streams = streams[: len(tasks)]
        end_of = {cid: t for st in played_streams for cid, t in st.end_of.items()}
        expected = set().union(*(st.expected for st in played_streams))
        held_so_far = True
        for k, step in enumerate(played_streams):
            # the calls that hung up during the step, whichever step started them (the
            # first step also takes none earlier, the last those after the ladder stopped):
            # each played call is checked for loss in exactly one step
            lo, hi = k * step_s, (k + 1) * step_s
            first, last = k == 0, k == len(played_streams) - 1
            hung_up = [c for c, t in end_of.items() if (first or t >= lo) and (last or t < hi)]
            # ... and of those, the ones the figures are measured on: the step's second half
            mid = lo + MEASURE_FROM * step_s
            measured = [c for c in hung_up if end_of[c] >= mid]
            step_result = _step_figures(
                step.rate,
                sum(1 for c in measured if end_of[c] < hi) / (hi - mid),
                hung_up,
                measured,
                expected,
                events,
                ended,
                wall0,
                lags[k],
                backlog[k],
                cpu[k],
            )
            result.steps.append(step_result)
            held_so_far = held_so_far and step_result.held
            if held_so_far:
                result.max_rate_held = step.rate
                result.max_hangup_rate_held = step_result.hangup_rate
        return result
    finally:
        await pipe.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _late_calls(redis: Redis, streams: list[StepStream], now: float) -> int:
    """Calls that hung up over a second ago and are not delivered yet: more than a few
    means the pipeline has fallen behind (the listener, the queue or the workers)."""
    due = sum(bisect.bisect_right(s.ends, now - P99_LIMIT_S) for s in streams)
    counters = await redis.hmget(COUNTERS, ["succeeded", "skipped"])  # type: ignore[misc]
    done = sum(int(v or 0) for v in counters)
    return max(0, due - done)


def _step_figures(
    rate: float,
    hangup_rate: float,
    window: list[str],
    measured: list[str],
    expected_all: set[str],
    events: dict[str, list[float]],
    ended: dict[str, tuple[float, ...]],
    wall0: float,
    lags: list[float],
    backlog: int,
    cpu: dict[str, float],
) -> StepResult:
    """Loss over ``window`` (every call that hung up in the step), latency over ``measured``
    (those of the step's measured part)."""
    latencies = []
    stages: dict[str, list[float]] = {
        "to_queue": [],
        "queued": [],
        "in_worker": [],
        "worker_until_addevent": [],
        "addevent": [],
        "crm_to_ledger": [],
    }
    stored = duplicates = 0
    expected = [c for c in window if c in expected_all]
    in_measured = set(measured)
    for cid in expected:
        times = events.get(cid)
        if not times:
            continue
        stored += 1
        duplicates += len(times) - 1
        if cid in ended and cid in in_measured:
            end, first_seen, first_attempt, done_at, event_sent = ended[cid]
            hangup_wall = end - BASE_TIME + wall0
            latencies.append(min(times) - hangup_wall)
            stages["to_queue"].append(first_seen - hangup_wall)  # tracker + hand-over
            stages["queued"].append(first_attempt - first_seen)  # waiting for a worker
            stages["in_worker"].append(done_at - first_attempt)  # CRM requests + ledger
            if event_sent:
                stages["worker_until_addevent"].append(event_sent - first_attempt)
                stages["addevent"].append(min(times) - event_sent)
                stages["crm_to_ledger"].append(done_at - min(times))
    p99 = percentile(latencies, 99)
    machine = cpu.pop("machine", 0.0)
    ours = sum(cpu.values())
    cores = {n: round(v, 2) for n, v in cpu.items()}
    cores["others"] = round(max(0.0, machine - ours), 2)
    missing = len(expected) - stored
    return StepResult(
        rate=rate,
        hangup_rate=round(hangup_rate, 1),
        calls=len(window),
        measured=len(latencies),
        expected=len(expected),
        stored=stored,
        missing=missing,
        duplicates=duplicates,
        p50_s=_r(percentile(latencies, 50)),
        p95_s=_r(percentile(latencies, 95)),
        p99_s=_r(p99),
        max_s=_r(max(latencies) if latencies else None),
        over_1s=sum(1 for x in latencies if x > P99_LIMIT_S),
        pbx_lag_p99_s=_r(percentile(lags, 99)) or 0.0,
        late_at_end=backlog,
        cpu_cores=cores,
        stages_p50_p99_s={
            k: [_r(percentile(v, 50)), _r(percentile(v, 99))] for k, v in stages.items()
        },
        held=missing == 0 and duplicates == 0 and p99 is not None and p99 < P99_LIMIT_S,
    )


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# --- the command -----------------------------------------------------------------------------


def wait_for_quiet(say: Any, max_wait_s: float = 60.0, busy_limit: float = 0.5) -> float:
    """Wait (up to ``max_wait_s``) until the others on this machine use under ``busy_limit``
    cores; the cores they were using when we started."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        busy = (machine_busy_seconds() - b0) / (time.monotonic() - t0)
        if busy < busy_limit or time.monotonic() > deadline:
            if busy >= busy_limit:
                say(f"e2e: the machine stayed busy ({busy:.2f} cores in use); measuring anyway")
            return round(busy, 2)
        say(f"e2e: others use {busy:.2f} cores; waiting for a quieter moment")


def table(runs: list[RunResult]) -> str:
    head = (
        f"{'CRM ms':>6} {'wrk':>3} {'calls/s':>7} {'hang/s':>6} {'calls':>6} {'stored':>6} "
        f"{'dup':>3} "
        f"{'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'lag99':>6} {'cores':>5} held"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        for s in run.steps:
            total = sum(s.cpu_cores.values()) - s.cpu_cores.get("others", 0.0)
            lines.append(
                f"{run.crm_latency_ms:>6g} {run.workers:>3} {s.rate:>7g} {s.hangup_rate:>6.0f} "
                f"{s.expected:>6} "
                f"{s.stored:>6} {s.duplicates:>3} {_f(s.p50_s)} {_f(s.p95_s)} {_f(s.p99_s)} "
                f"{_f(s.pbx_lag_p99_s)} {total:>5.2f} {'yes' if s.held else 'NO'}"
            )
        lines.append(
            f"{'':>6} => highest rate held (zero loss, p99 < 1 s): "
            f"{run.max_rate_held:g} calls/s "
            f"({run.max_hangup_rate_held:g} hangups/s measured)"
            + (f"  [{run.stopped}]" if run.stopped else "")
        )
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return f"{v:>6.3f}" if v is not None else f"{'-':>6}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="one tiny step (smoke test)")
    p.add_argument("--rates", type=float, nargs="+", help=f"calls/s per step {RATES}")
    p.add_argument("--latencies", type=float, nargs="+", help=f"CRM latency, ms {LATENCIES_MS}")
    p.add_argument("--workers", type=int, nargs="+", help=f"worker processes {WORKERS}")
    p.add_argument("--step-s", type=float, help=f"seconds of calls per step ({STEP_S:g})")
    p.add_argument("--max-jobs", type=int, default=50, help="[worker] max_jobs (50)")
    p.add_argument("--seed", type=int, help="seed of the synthetic mix")
    p.add_argument("--out", type=Path, help=f"results JSON (bench/results-{NAME}.json)")
    p.add_argument("--no-write", action="store_true", help="do not write the JSON")
    p.add_argument("--no-wait-quiet", action="store_true", help="start at once, busy or not")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    q: dict[str, Any] = QUICK if args.quick else {}
    rates = tuple(args.rates or q.get("rates") or RATES)
    latencies = tuple(args.latencies or q.get("latencies") or LATENCIES_MS)
    workers = tuple(args.workers or q.get("workers") or WORKERS)
    step_s = float(args.step_s or q.get("step_s") or STEP_S)
    seed = int(args.seed if args.seed is not None else q.get("seed", SEED))

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    t0 = time.monotonic()
    say(f"e2e: generating the call ladder {rates} x {step_s:g}s ...")
    streams = build_ladder(rates, step_s, seed)
    say(
        f"e2e: {sum(len(s.call_ids) for s in streams)} calls, "
        f"{sum(s.messages for s in streams)} AMI events, in {time.monotonic() - t0:.1f}s"
    )
    others_at_start = 0.0 if args.no_wait_quiet else wait_for_quiet(say)
    runs: list[RunResult] = []
    for latency in latencies:
        for n in workers:
            say(f"e2e: CRM latency {latency:g} ms, {n} worker(s)")
            runs.append(
                asyncio.run(
                    run_setting(
                        streams,
                        latency,
                        n,
                        step_s=step_s,
                        max_jobs=args.max_jobs,
                        say=say,
                    )
                )
            )
    print(table(runs), flush=True)
    target_run = next(
        (
            r
            for r in runs
            if r.crm_latency_ms == TARGET["crm_latency_ms"] and r.workers == TARGET["workers"]
        ),
        None,
    )
    figures: dict[str, Any] = {
        "bench": NAME,
        "what": "PBX simulator -> telefum listen -> Redis -> telefum worker(s) -> reference CRM",
        "latency_is": "call's last hangup (AMI Timestamp) -> its event stored in the CRM",
        "held_means": f"every call stored exactly once and p99 < {P99_LIMIT_S:g} s",
        "quick": bool(args.quick),
        "step_s": step_s,
        "rates": list(rates),
        "seed": seed,
        "machine": machine_info(),
        "others_cores_at_start": others_at_start,
        "note": "all parts (PBX simulator, listener, Redis, workers, CRM) share this "
        "machine's cores, and so do other users (cpu_cores.others, per step)",
        "runs": [asdict(r) for r in runs],
        "target": {
            **TARGET,
            "max_rate_held": target_run.max_rate_held if target_run else None,
            "met": bool(target_run and target_run.max_rate_held >= TARGET["calls_per_s"]),
        },
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    if not args.no_write:
        say(f"e2e: wrote {write_results(NAME, figures, args.out)}")
    return figures


if __name__ == "__main__":
    main()
