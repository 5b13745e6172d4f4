"""The wire contract in Python: what crosses between clients, the server and its replicas.

| module | what |
|---|---|
| `wire/` | the generated protobuf and gRPC stubs of `proto/hyqut/qworker/v1/qworker.proto` (`proto/generate.py`) |
| `evaluation.py` | one batched evaluation (`Evaluation`) and its answer (`Result`) as data, and `run` |
| `convert.py` | wire messages <-> Evaluations and Results; a request's checks from its headers alone |
| `limits.py` | what one request may ask of a server |
| `errors.py` | every error a call can end in, and the one table of their gRPC status codes |
"""
