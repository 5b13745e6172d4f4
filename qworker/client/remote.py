"""`grpc://host:port`: a Backend whose circuits run on a qworker server (docs/design.md, "The client").

    backend = get_backend("grpc://127.0.0.1:50051")               # = RemoteBackend(...)
    backend = get_backend("grpc://10.0.0.5:50051?simulator=local&deadline=120&tls_root_cert=ca.pem")
    backend = get_backend("grpc://10.0.0.5:50051,10.0.0.6:50051")  # calls spread over two frontends
    z = backend.expectations(spec, theta, angles)                 # the server's "auto" by default

    pending = backend.start(spec, theta, angles, Gradient("fd"))  # expectations now, Jacobians
    z = pending.expectations                                      # on their way; ... later:
    g_theta, g_angles = pending.vjp(grad_out)                     # waits for them only here

The token comes from `token=` or $HYQUT_TOKEN (never from the address, which ends up in logs and
run.json). A batch goes as one request, or as several if the server's limits ask for it (sent
concurrently); the server spreads each request over its replicas. Every call has a deadline and
an id (`x-request-id`, in the server's logs and in errors). A call that fails UNAVAILABLE (the
server restarting, no live replica yet), or RESOURCE_EXHAUSTED with a retry-after hint (the server
full), is retried with backoff until that deadline (an evaluation is a pure function of its
request, so a retry is safe); nothing else is retried.

Several frontends (a list of addresses, or a DNS name with several; client/targets.py): calls are
spread over those that are SERVING by gRPC's round_robin, and the backward of kept Jacobians goes
to the frontend that answered their handle (its answer names it). If that frontend is gone
(UNAVAILABLE), the VJP is recomputed from the inputs through the others at once, as when the
handle is NOT_FOUND.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
from torch import Tensor

from qworker.backends import Backend, Capabilities, Pending
from qworker.circuit import VERSION as CIRCUIT_VERSION
from qworker.circuit import CircuitSpec
from qworker.client.connection import GOING_AWAY, RECOMPUTES, Connection, RemoteError
from qworker.client.targets import parse
from qworker.gradients import Gradient
from qworker.protocol import shards
from qworker.protocol.convert import encode_tensor, to_request, to_response, to_result
from qworker.protocol.evaluation import Evaluation, Header, Result
from qworker.protocol.limits import Limits, max_tokens
from qworker.protocol.wire import qworker_pb2 as pb

log = logging.getLogger("qworker.client")

QUERY_KEYS = ("simulator", "deadline", "tls_root_cert", "jacobians")
JACOBIANS = ("kept", "dense")  # where a shifted method's Jacobians live between forward and backward


class RemoteBackend(Backend):
    """The client of a qworker server. `simulator` picks the server's backend (qulacs, local,
    shots, a plug-in); `simulator_options` are that backend's (Info lists them: shots, seed, ...).
    `deadline_s` bounds every call; `connect_timeout_s` bounds the first connection. `jacobians`:
    a shifted method's Jacobians stay on the server between forward and backward ("kept", the
    default: the backward sends the upstream gradient and gets the VJP), or come back ("dense")."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls_root_cert: str | Path | bytes | None = None,
        simulator: str | None = None,
        deadline_s: float | None = None,
        connect_timeout_s: float = 10.0,
        jacobians: str | None = None,
        **simulator_options,
    ):
        parts = urlsplit(address)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - set(QUERY_KEYS)
        usage = f"expected grpc://host:port[,host:port...][?{'=..&'.join(QUERY_KEYS)}=..]"
        if parts.scheme != "grpc" or not parts.netloc or unknown:
            raise ValueError(f"bad qworker address {address!r}: {usage}")
        try:
            target = parse(parts.netloc)
        except ValueError as e:
            raise ValueError(f"bad qworker address {address!r}: {e}; {usage}") from None
        where = jacobians or query.get("jacobians", "kept")
        if where not in JACOBIANS:
            raise ValueError(f"jacobians={where!r}: choose one of {', '.join(JACOBIANS)}")
        self.kept = where == "kept"
        self.name = f"grpc://{parts.netloc}"  # the frontends as given
        self.simulator = simulator or query.get("simulator", "auto")
        self.options = simulator_options
        cert = tls_root_cert or query.get("tls_root_cert")
        deadline_s = float(deadline_s or query.get("deadline", 60.0))
        self.connection = Connection(target, token, cert, deadline_s, connect_timeout_s)
        self._to_frontend = (token, cert, deadline_s, connect_timeout_s)
        self._frontends: dict[str, Connection] = {}  # pinned connections, by the address a frontend gave
        self._strangers: set[str] = set()  # addresses frontends gave that are not the target's (warned once)
        self._lock = threading.Lock()
        self._calls = itertools.count()  # varies a seeded shots backend's seed from call to call
        self.info = self._info()
        if self.info.circuit_version != CIRCUIT_VERSION:
            raise ValueError(
                f"{self.name} speaks circuit spec version {self.info.circuit_version}, this client {CIRCUIT_VERSION}: "
                "run the same hyqut version on both sides"
            )
        served = {b.name: b for b in self.info.backends}
        if self.simulator not in served:
            raise ValueError(f"{self.name} does not serve simulator {self.simulator!r}; it has {', '.join(served)}")
        b = served[self.simulator]
        self._capabilities = Capabilities(
            tuple(b.gradient_methods), b.hardware, b.max_shots, b.max_batch, b.queue_latency_s,
            seeded=b.seeded, options=tuple(b.options),
        )  # fmt: skip
        self.limits = Limits(**{f.name: getattr(self.info.limits, f.name) for f in fields(Limits)})
        self._executor = None

    # -- the Backend interface -------------------------------------------------------------

    def expectations(self, spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
        return self._evaluate(spec, theta, angles, "expectations").expectations

    def jacobians(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient) -> tuple[Tensor, Tensor]:
        self.check_method(grad)
        return self._evaluate(spec, theta, angles, "jacobians", grad).jacobians

    def vjp(
        self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor, grad: Gradient
    ) -> tuple[Tensor, Tensor]:
        self.check_method(grad)
        return self._evaluate(spec, theta, angles, "vjp", grad, grad_out).vjp

    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def methods(self) -> tuple[str, ...]:
        """The gradient methods the server's backend runs (from its Info)."""
        return self._capabilities.methods

    @property
    def seeded(self) -> bool:
        return self._capabilities.seeded

    def reseed(self, seed: int) -> None:
        """Requests from now on carry seeds `seed`, `seed + 1`, ... when the server's backend draws
        random numbers (Info's `seeded`: hardware and its emulators); exact simulators take no seed."""
        if not self.seeded:
            return
        self.options["seed"] = seed
        self._calls = itertools.count()

    def start(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient) -> Pending:
        """Expectations now, from one request that also starts the Jacobians, which the server
        keeps (keep_jacobians) and goes on computing while the classical model goes on;
        `Pending.vjp` sends the upstream gradient with their handle. With adjoint (reverse mode)
        the VJP is requested in `vjp` instead."""
        self.check_method(grad)
        if grad.rule.reverse:
            return Pending(self.expectations(spec, theta, angles), lambda g: self.vjp(spec, theta, angles, g, grad))
        if not self.kept:  # the Jacobians come back with the forward and are contracted here
            header, units, requests = self._requests(spec, theta, angles, "jacobians", grad)
            jacobians = self._gather(header, units, requests, angles)
            z = self._evaluate(spec, theta, angles, "expectations").expectations
            return Pending(z, lambda g: _vjp_as_kept(header, units, jacobians.result().jacobians, g.to(z)))
        header, units, requests = self._requests(spec, theta, angles, "jacobians", grad, keep=True)
        if len(requests) == 1:
            answers = [self.connection.call("Evaluate", requests[0])]
        else:
            answers = list(self._pool().map(functools.partial(self.connection.call, "Evaluate"), requests))
        z = _result(header, units, answers, angles).expectations
        kept = [(a.handle, a.frontend) for a in answers]
        return Pending(z, lambda g: self._vjp_of_kept(header, units, requests, kept, g, like=angles))

    def _vjp_of_kept(self, header: Header, units: list, requests: list, kept: list[tuple], g: Tensor, like: Tensor):
        """The VJP of each request's kept Jacobians (`kept`: its handle, and the frontend that holds
        it), asked of that frontend; one whose handle is gone (NOT_FOUND: evicted, expired, its
        replica or the server restarted) or whose frontend is (UNAVAILABLE there) is sent again with
        its inputs, through any frontend: the same bits (counted in RECOMPUTES)."""
        g = g.to(like.dtype)

        def one(i: int) -> pb.EvaluateResponse:
            rows = g[units[i].tokens.start : units[i].tokens.stop]
            handle, frontend = kept[i]
            connection = self._holder(frontend)
            try:
                return connection.call("Evaluate", _by_handle(requests[i], handle, rows))
            except RemoteError as e:
                unavailable = connection.pinned and e.code in GOING_AWAY
                if not (e.code == grpc.StatusCode.NOT_FOUND or unavailable):
                    raise
            RECOMPUTES.inc()
            return self.connection.call("Evaluate", _with_inputs(requests[i], rows))

        answers = [one(0)] if len(units) == 1 else list(self._pool().map(one, range(len(units))))
        vjp_header = replace(header, want="vjp", keep_jacobians=False, include_expectations=False)
        return _result(vjp_header, units, answers, like).vjp

    def _holder(self, frontend: str) -> Connection:
        """Where a handle's call goes: the frontend that gave it (`frontend`, from its answer) when
        the calls are spread over several and it is one of them; else the one channel."""
        if not (self.connection.target.spread and frontend):
            return self.connection
        with self._lock:
            if frontend not in self._frontends:
                if not self.connection.target.owns(frontend):  # the token goes only where the user said
                    if frontend not in self._strangers:
                        self._strangers.add(frontend)
                        why = "its handles' calls go to any frontend (recomputed where it is not that one)"
                        log.warning("%s: a frontend names itself %s, not one of these: %s", self.name, frontend, why)
                    return self.connection
                token, cert, deadline_s, connect_timeout_s = self._to_frontend
                tls_name = self.connection.target.name
                self._frontends[frontend] = Connection(
                    frontend, token, cert, deadline_s, connect_timeout_s, pinned=True, tls_name=tls_name
                )
            return self._frontends[frontend]

    # -- the wire --------------------------------------------------------------------------

    def _evaluate(self, spec, theta, angles, want, grad=None, grad_out=None) -> Result:
        header, units, requests = self._requests(spec, theta, angles, want, grad, grad_out)
        if len(requests) == 1:  # one request: no thread to hand it to
            return _result(header, units, [self.connection.call("Evaluate", requests[0])], angles)
        return self._gather(header, units, requests, angles).result()

    def _submit(self, spec, theta, angles, want, grad=None, grad_out=None) -> Future:
        """Send the batch's requests concurrently; a future of its Result."""
        return self._gather(*self._requests(spec, theta, angles, want, grad, grad_out), angles)

    def _requests(self, spec, theta, angles, want, grad=None, grad_out=None, keep=False):
        """(header, units, requests): the batch cut into requests that fit the server's limits (the
        server spreads each over its replicas); the cut depends on the batch alone, so results do
        too. Kept Jacobians are cut as their VJP requests will be (those must fit as well)."""
        ev = Evaluation.of(
            spec, self.simulator, theta, angles, want, grad, grad_out, keep, self.options, keep_jacobians=keep
        )  # kept Jacobians come with the expectations: one request
        whole, header = to_request(ev), ev.header
        size = max_tokens(replace(header, want="vjp", keep_jacobians=False) if keep else header, self.limits)
        units = shards.by_tokens(header.n_tokens, size)
        requests = [whole] if len(units) == 1 else shards.pieces(whole, header, units)
        for r in requests:
            self._seed(r)
        return header, units, requests

    def _gather(self, header: Header, units: list, requests: list, like: Tensor) -> Future:
        calls = [self._pool().submit(self.connection.call, "Evaluate", r) for r in requests]
        merged: Future = Future()
        left, lock = [len(calls)], threading.Lock()

        def one_done(_call) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                merged.set_result(_result(header, units, [c.result() for c in calls], like))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits
                merged.set_exception(e)

        for c in calls:
            c.add_done_callback(one_done)
        return merged

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="qworker-client")
        return self._executor

    def _seed(self, request: pb.EvaluateRequest) -> None:
        """A fresh, reproducible seed for every request (a seeded backend's options): `seed`, `seed + 1`, ..."""
        seed = self.options.get("seed")
        if seed is not None:
            request.backend.options["seed"].integer = (seed + next(self._calls)) % 2**63

    def _info(self) -> pb.InfoResponse:
        return self.connection.call("Info", pb.InfoRequest())

    @property
    def deadline_s(self) -> float:
        return self.connection.deadline_s

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        for connection in (self.connection, *self._frontends.values()):
            connection.close()
        self._frontends = {}

    def __getstate__(self) -> dict:  # picklable and deep-copyable: the copy reconnects on use
        state = dict(self.__dict__, _executor=None, _calls=next(self._calls), info=self.info.SerializeToString())
        return dict(state, _frontends={}, _lock=None)

    def __setstate__(self, state: dict) -> None:
        info = pb.InfoResponse.FromString(state["info"])
        self.__dict__.update(state, _calls=itertools.count(state["_calls"]), info=info, _lock=threading.Lock())


def _result(header: Header, units: list, responses: list[pb.EvaluateResponse], like: Tensor) -> Result:
    """The Result of a batch from its requests' responses, in the dtype and on the device of `like`."""
    r = to_result(shards.assemble(header, units, responses))
    move = lambda t: t.to(like)  # noqa: E731
    return Result(
        r.expectations if r.expectations is None else move(r.expectations),
        r.jacobians and tuple(map(move, r.jacobians)),
        r.vjp and tuple(map(move, r.vjp)),
        r.compute_seconds,
    )


def _by_handle(kept: pb.EvaluateRequest, handle: str, grad_out: Tensor) -> pb.EvaluateRequest:
    """The VJP request of the Jacobians `kept` left under `handle`: no theta, no angles."""
    return pb.EvaluateRequest(
        circuit=kept.circuit,
        backend=kept.backend,
        gradient=kept.gradient,
        want=pb.WANT_VJP,
        grad_out=encode_tensor(grad_out),
        handle=handle,
    )


def _with_inputs(kept: pb.EvaluateRequest, grad_out: Tensor) -> pb.EvaluateRequest:
    """The VJP request that recomputes what `kept` asked for: its inputs (and seed) with grad_out."""
    out = pb.EvaluateRequest()
    out.CopyFrom(kept)
    out.want, out.keep_jacobians, out.include_expectations = pb.WANT_VJP, False, False
    out.grad_out.CopyFrom(encode_tensor(grad_out))
    return out


def _vjp_as_kept(header: Header, units: list, jacobians: tuple[Tensor, Tensor], g: Tensor) -> tuple[Tensor, Tensor]:
    """The VJP of dense Jacobians, contracted here request by request as the server contracts
    kept ones (`shards.vjp_by_units`) and merged as the kept path merges its requests' answers:
    the same bits as the kept path whenever the two cut the batch into the same requests."""
    answers = []
    for u in units:
        rows = slice(u.tokens.start, u.tokens.stop)
        head = replace(header, n_tokens=len(u.tokens))
        vjp = shards.vjp_by_units(head, jacobians[0][rows], jacobians[1][rows], g[rows])
        answers.append(to_response(Result(vjp=vjp)))
    return _result(replace(header, want="vjp"), units, answers, g).vjp
