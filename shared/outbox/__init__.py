"""The write path: the PostgreSQL unit of work, and the outbox write that rides the COMMIT."""
