"""The durable pipeline: one arq job per finished call, idempotent CRM steps, retries,
dead letters. The place where a call meets the CRM.

Where things are::

    handoff.py   listener side: submit(record) -> fsync'd spool (spool.py) -> queue.py
    queue.py     enqueue one call atomically with its ledger; job id call:{pbx}:{call_id}
    first_call.py  each caller's earliest inbound call: the source of a contact created later
    ledger.py    what the CRM has already accepted, per call (arq is the queue, not the ledger)
    outbox.py    CRM answers Redis has not taken yet: memory + a fsync'd journal per process
    jobs.py      the arq job: read the ledger, plan, run the steps, apply the retry decision
    plan.py      pure: which calls are logged, subject/description templates, credentials
    steps.py     find -> addcont (under a per-phone lock) -> addevent, each resumable
    retry.py     by exception type: Transient (crm_client.errors) -> the policy's backoff
                 (telephony/backoff.py) within the budget; else dead letter
    dlq.py       the dead-letter store: list, requeue, drop
    reconcile.py re-enqueues calls the ledger still owes but arq lost
    stats.py     counters, latency buckets, heartbeats, spool sizes; read_stats()
    crm_health.py  whether each CRM answers (for /health); a failing CRM back: its waiting
                 calls run now (queue.retry_now)
    app.py       the worker process (arq Worker + heartbeat + reconciler); run_worker()
    redis_url.py one Redis URL -> every client's connection settings (arq's too): a plain
                 URL (percent-decoded password), or redis+sentinel:// (a failover followed)
    replicas.py  behind Sentinel: wait for a replica before forgetting what Redis took
    embedded_redis.py  a private redis-server for [redis] url = "", the demo and tests
    private_files.py   0700 folders, 0600 files (spool, outbox, the private Redis)

Guaranteed (with Redis persistent, i.e. appendonly, as in the compose file):

- a call the listener's handoff has fsync'd reaches the queue, in order, even across a
  Redis outage or a listener restart; a call handed over twice is one job;
- every queued call ends delivered, skipped by policy (with the reason), or in the
  dead-letter store (with every attempt's error); never silently dropped, whatever arq
  does with the job (expiry, timeout, a crashed worker: see reconcile.py);
- a contact is created at most once per phone number and CRM, with ``x_pstn`` the number
  its caller dialled first among the calls queued so far, whatever order they are
  delivered in (first_call.py). No CRM write is ever re-sent by a library (aiohttp re-sent
  a GET whose connection dropped: crm_client/client.py), and a run that does not know
  whether addcont was carried out looks the phone up before it creates anything;
- an answer the CRM gave (a contact's or an event's id) is not lost to Redis: if Redis
  fails or hangs at that moment, it is kept in memory and in a fsync'd journal on disk
  (outbox.py) until Redis takes it, also across a crash of the worker (another worker on
  its host takes the journal over), and the run is not failed for it;
- an event is written once, except in one window TelefUM cannot close (it has no
  idempotency key): the worker that sent addevent dies, or loses the connection, or times
  out, while the CRM is processing it, so that no answer reaches it. Then it is sent again
  (a duplicate rather than a loss), logged and counted in ``possible_duplicates``
  (``telefum_crm_possible_duplicates_total``); nothing else is counted there. See steps.py.

Not guaranteed: calls still in the listener's memory (not yet fsync'd) when it crashes
(the backfill from the PBX's CDR, telephony/backfill.py, finds those again at its next
start when a source is configured); anything if Redis loses acknowledged writes (no AOF,
or AOF ``everysec`` and a power cut; behind Sentinel the listener's batches, the workers'
ledger writes and the outbox wait up to a second for a replica, replicas.py, and what none
confirmed in time is logged); an answer kept on the
disk of a worker whose host never comes back (after ``settle_s`` the call is sent again,
and counted).
"""
