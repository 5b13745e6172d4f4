"""Shards (qworker/protocol/shards.py): a request cut into token x column blocks and put back together gives what the
whole request gives; the cut depends on the request alone."""

import pytest
import torch

from qworker import CircuitSpec, Gradient
from qworker.gradients import contract
from qworker.protocol import shards
from qworker.protocol.convert import check_request, to_evaluation, to_request, to_result
from qworker.protocol.errors import HandleGone
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.limits import Limits
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.replica import Replica

SPEC = CircuitSpec(10, 2)
REPLICA = Replica(("local",))


@pytest.fixture(autouse=True)
def small_units(monkeypatch):
    """Units of 2^22 amplitude-circuits (a tenth of a second of one CPU replica): requests small
    enough for tests are cut into several."""
    monkeypatch.setattr(shards, "UNIT_WORK", 2**22)


def request(want, n, method=None, per_token=False, include=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, SPEC.n_params) if per_token else (SPEC.n_params,)
    theta = torch.rand(shape, generator=g, dtype=torch.float64) * 6.28
    angles = torch.rand(n, SPEC.n_angles, generator=g, dtype=torch.float64) * 6.28
    grad_out = torch.randn(n, SPEC.n_qubits, generator=g, dtype=torch.float64) if want == "vjp" else None
    grad = Gradient(method) if method else None
    return to_request(Evaluation.of(SPEC, "local", theta, angles, want, grad, grad_out, include))


def whole_and_cut(req: pb.EvaluateRequest):
    header = check_request(req, Limits())
    plan = shards.plan(header)
    answers = [REPLICA.evaluate(p.SerializeToString())[0] for p in shards.pieces(req, header, plan)]
    whole, *_ = REPLICA.evaluate(req.SerializeToString())
    cut = shards.assemble(header, plan, [pb.EvaluateResponse.FromString(a) for a in answers])
    return plan, to_result(pb.EvaluateResponse.FromString(whole)), to_result(cut)


@pytest.mark.parametrize(
    "want, n, method, per_token, include",
    [
        ("jacobians", 300, "shift", False, True),  # 3 token blocks x 6 column blocks
        ("jacobians", 200, "fd", True, False),
        ("jacobians", 600, "spsa", False, True),  # token blocks only: its directions are per call
        ("vjp", 9000, "adjoint", False, True),  # theta's VJP summed over token blocks
        ("vjp", 5000, "adjoint", True, False),
        ("vjp", 300, "fd", False, False),  # a VJP by a column method: cut as its Jacobians are
        ("vjp", 200, "shift", True, False),
        ("expectations", 10000, None, False, False),
    ],
)
def test_cut_and_assembled_equals_whole(want, n, method, per_token, include):
    plan, whole, cut = whole_and_cut(request(want, n, method, per_token, include))
    assert len(plan) > 1
    covered = sorted((t, c) for u in plan for t in u.tokens for c in (u.components or [None]))
    columns = range(SPEC.n_params + SPEC.n_angles) if plan[0].components is not None else [None]
    assert covered == [(t, c) for t in range(n) for c in columns]  # every token-column once, none twice
    for field in ("expectations", "jacobians", "vjp"):
        a, b = getattr(whole, field), getattr(cut, field)
        assert (a is None) == (b is None), field
        if a is not None:
            if method == "spsa" and field == "jacobians":  # a unit draws its own directions: compare shapes
                assert [t.shape for t in a] == [t.shape for t in b]
                continue
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=field)


def test_the_cut_depends_on_the_request_alone():
    # fd: 121 circuits of 2^10 amplitudes a token; 2^22 / (121 x 2^10) = 33 -> blocks of 32 tokens
    header = check_request(request("jacobians", 256, "fd"), Limits())
    plan = shards.plan(header)
    assert plan == [shards.Unit(range(s, s + 32)) for s in range(0, 256, 32)]  # 8 blocks: all columns each
    assert shards.plan(header) == plan
    few = shards.plan(check_request(request("jacobians", 96, "fd"), Limits()))  # 3 blocks: cut the columns too
    # a 10-column unit is 1 + 2 x 10 circuits a token: 2^22 / (21 x 2^10) = 195 -> one block of 128 >= 96 tokens
    assert few == [shards.Unit(range(96), range(k, k + 10)) for k in range(0, 60, 10)]
    small = check_request(request("jacobians", 4, "fd"), Limits())
    assert shards.plan(small) == [shards.Unit(range(4))]  # not worth cutting


@pytest.mark.parametrize("per_token, n", [(False, 300), (True, 96)])  # token blocks; token x column blocks
def test_kept_jacobians_answer_the_vjp_a_recomputation_does(per_token, n):
    """keep_jacobians, then a VJP by handle, unit by unit, equals the VJP request with the inputs
    (cut into the same units) bit for bit, and the dense Jacobians contracted here to rounding; a
    handle answers once."""
    method = "fd"
    keep = request("jacobians", n, method, per_token)
    keep.keep_jacobians = True
    header = check_request(keep, Limits())
    plan = shards.plan(header)
    kept = [pb.EvaluateResponse.FromString(REPLICA.evaluate(p.SerializeToString())[0])
            for p in shards.pieces(keep, header, plan)]  # fmt: skip
    assert all(k.handle and not k.HasField("jacobian_theta") for k in kept)  # the Jacobians stayed here
    with_inputs = request("vjp", n, method, per_token)  # the same inputs (seeded), and an upstream gradient
    vjp_header = check_request(with_inputs, Limits())
    assert shards.plan(vjp_header) == plan
    by_handle = []
    for piece, k in zip(shards.pieces(with_inputs, vjp_header, plan), kept):
        piece.ClearField("theta")
        piece.ClearField("angles")
        piece.handle = k.handle
        by_handle.append(pb.EvaluateResponse.FromString(REPLICA.evaluate(piece.SerializeToString())[0]))
    recomputed = [REPLICA.evaluate(p.SerializeToString())[0] for p in shards.pieces(with_inputs, vjp_header, plan)]
    a = to_result(shards.assemble(vjp_header, plan, by_handle)).vjp
    b = to_result(shards.assemble(vjp_header, plan, [pb.EvaluateResponse.FromString(r) for r in recomputed])).vjp
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    dense = to_result(pb.EvaluateResponse.FromString(REPLICA.evaluate(request("jacobians", n, method, per_token)
                                                                      .SerializeToString())[0])).jacobians  # fmt: skip
    g = to_evaluation(with_inputs).grad_out
    want = contract(*dense, g, per_token)
    for x, y in zip(a, want):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    with pytest.raises(HandleGone):  # answered once: its Jacobians are freed
        (piece,) = shards.pieces(with_inputs, vjp_header, plan[:1])
        piece.ClearField("theta")
        piece.ClearField("angles")
        piece.handle = kept[0].handle
        REPLICA.evaluate(piece.SerializeToString())
