"""Scheduling policies: each is one class over the shared `Scheduler` bookkeeping (see `base`)."""
