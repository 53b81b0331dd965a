"""The durable pipeline: one arq job per finished call, idempotent CRM steps, retries,
dead letters. The place where a call meets the CRM."""
