"""One module per job kind, each defining `KIND = registry.JobKind(...)` (see backend/jobs/registry.py)."""
