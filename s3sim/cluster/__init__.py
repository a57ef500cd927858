"""Replicas behind a router, simulated: N engines (each its own policy, KV pool and latency model, possibly
different GPUs) as SimPy processes and a router that places every arriving request on one of them.

- `routers`: where a request goes (round-robin, least outstanding, least KV load, predicted load);
- `engine`: the cluster simulation (`simulate_cluster`) and what each replica shows the router;
- `build`: replicas and router from a config (`cluster.replicas`, `cluster.router`, `cluster.overrides`);
- `summary`: the cluster's summary row and one row per replica.
"""
