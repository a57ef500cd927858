"""Replicas behind a router, simulated: N engines (each its own policy, KV pool and latency model, possibly
different GPUs) as SimPy processes and a router that places every arriving request on one of them.

- `routers`: where a request goes (round-robin, least outstanding, least KV load, predicted load);
- `build`: the requests, replicas and router of a config (`cluster.replicas`, `cluster.router`,
  `cluster.overrides`); one engine is a cluster of one replica;
- `summary`: the run's summary row, and a cluster's row per replica.

The simulation itself is `s3sim.simulator.engine.simulate_cluster`.
"""
