"""The audit trail: R4 AuditEvents in an append-only hash chain (chain.py), recorded in batches (recorder.py)."""
