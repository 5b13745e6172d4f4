"""The qworker service: gRPC in front of a pool of replicas (docs/design.md, "The service").

| module | what |
|---|---|
| `service.py` | the `grpc.aio` server: routing, health, reflection, Info, Scale; `create_server`, `serve` |
| `replica.py` | one replica's simulators: request bytes in, response bytes out |
| `in_process.py` | the pool of one replica in the server's own process |
| `ray_pool.py` | the pool of Ray actor replicas: routing, retries, scaling |
| `auth.py` | bearer-token auth (an interceptor) |
| `metrics.py` | the service's Prometheus metrics |
| `embedded.py` | a service inside this process on a local Ray (`--qbackend ray`) |
"""
