"""Security events: what the store records with each change, the history users read, and
the webhook outbox the Celery worker delivers (Standard Webhooks)."""
