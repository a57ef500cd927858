"""The engine-agnostic core that the simulator and the executor share.

Requests and their lifecycle, the KV pool, the scheduling policies and the supervisor, the predictors'
interface with the simple predictors, and the invariant checks. Nothing here imports torch or simpy:
the simulator prices the core's batches with a latency model, the executor runs them on a real model.
"""
