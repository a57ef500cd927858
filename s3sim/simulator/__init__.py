"""The simulator backend: the core's scheduler driven by SimPy and a latency model instead of a GPU."""
