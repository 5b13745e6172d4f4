"""cluster/config.yaml, the `ray up` file of the qworker cluster: valid by Ray's own validator (run
offline, as `ray up` runs it before it calls the cloud), and what it must say for the service to
work: the head runs `python -m qworker serve --per-node` after Ray (a frontend on every simulator
node, none on the head), every simulator node type advertises the `qworker` resource and each node
the replica resource selects holds its frontend's replicas, the setup installs torch and this
project, Ray's token auth is on, port 50051 stays private, and every key is commented."""

import contextlib
import copy
import io
import re
import shlex
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.version import Version
from ray.autoscaler._private.providers import _NODE_PROVIDERS
from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

from qworker.__main__ import parse_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "config.yaml"
REPLICA_RESOURCE = "qworker"
QWORKER_PORT = 50051


def gpu_replicas_planned() -> int:
    """The planned full size in GPU replicas, as cluster/README.md's "Scaling model" states it."""
    text = (ROOT / "cluster" / "README.md").read_text()
    return int(re.search(r"The planned full size: .*? = (\d+) GPU replicas", text, re.S).group(1))


def load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to the cloud (create_or_update_cluster ->
    _bootstrap_config in ray/autoscaler/_private/commands.py): the provider must be known; defaults
    of the provider filled in and setup commands merged (prepare_config); the AWS bootstrap's
    first check (check_legacy_fields); then the JSON schema ray-schema.json and the cross-field
    checks (validate_config). Only the steps that need AWS (instance-type lookups, IAM, subnets)
    are left out. Returns the prepared config, as the launcher uses it."""
    assert config["provider"]["type"] in _NODE_PROVIDERS, f"unknown provider {config['provider']['type']!r}"
    prepared = prepare_config(copy.deepcopy(config))
    check_legacy_fields(prepared)
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return load()


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    return ray_validate(config)


def workers(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def serve_command(config: dict) -> str:
    """The head's start command that runs the qworker service."""
    found = [c for c in config["head_start_ray_commands"] if "python -m qworker serve" in c]
    assert len(found) == 1, f"the head must start `python -m qworker serve` exactly once, found {found}"
    return found[0]


def serve_args(config: dict):
    """The service's flags, parsed by qworker's own command line (so a renamed flag fails here),
    each spelled out in full (argparse would take an abbreviation, or a typo that is one)."""
    words = shlex.split(re.search(r"python -m qworker (serve[^>&;|]*)", serve_command(config)).group(1))
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        parse_args(["serve", "--help"])
    known = set(re.findall(r"--[\w-]+", help_text.getvalue()))
    flags = {w.split("=")[0] for w in words if w.startswith("--")}
    assert flags <= known, f"`qworker serve` has no flag {sorted(flags - known)}"
    return parse_args(words)


# -- Ray's validator ------------------------------------------------------------------------------


def test_ray_accepts_the_config(prepared):
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws"


def _set(path: tuple, value):
    def mutate(c):
        *parents, last = path
        for p in parents:
            c = c[p]
        c[last] = value

    return mutate


def _delete(path: tuple):
    def mutate(c):
        *parents, last = path
        for p in parents:
            c = c[p]
        del c[last]

    return mutate


BROKEN = {
    "unknown top-level key": _set(("max_worker",), 3),
    "unknown node-type key": _set(("available_node_types", "ray.worker.cpu", "max_worker"), 3),
    "unknown docker key": _set(("docker", "images"), "rayproject/ray:latest"),
    "negative resource": _set(("available_node_types", "ray.worker.gpu", "resources", "qworker"), -1),
    "fractional resource": _set(("available_node_types", "ray.worker.cpu", "resources", "qworker"), 0.5),
    "node type without resources": _delete(("available_node_types", "ray.worker.cpu", "resources")),
    "max_workers as text": _set(("max_workers",), "24"),
    "min_workers over the global max": _set(("max_workers",), 0),
    "head type not among the node types": _set(("head_node_type",), "ray.head.missing"),
}


@pytest.mark.parametrize("mutate", BROKEN.values(), ids=BROKEN.keys())
def test_ray_rejects_a_broken_copy(config, mutate):
    """The validator is live: the same file, broken one way, is refused."""
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(broken)


# -- the head runs the service --------------------------------------------------------------------


def test_head_starts_ray_then_the_qworker_frontends(config):
    cmds = config["head_start_ray_commands"]
    ray_start = [i for i, c in enumerate(cmds) if "ray start --head" in c]
    serve = cmds.index(serve_command(config))
    assert ray_start and ray_start[0] < serve, "the service connects to Ray (--ray-address auto): start Ray first"
    assert re.search(r"python -m qworker serve[^;]*&\s*(echo|$)", cmds[serve]), (
        "the service must run in the background, or `ray up` waits on it forever"
    )
    stop_service = [i for i, c in enumerate(cmds) if "qworker.pid" in c and "kill" in c]
    assert stop_service and stop_service[0] < ray_start[0], "an earlier service is stopped before Ray restarts"

    args = serve_args(config)
    assert args.command == "serve"
    assert args.per_node, "every node that holds replicas serves them itself (--per-node): no process on every path"
    assert (args.host, args.port) == ("0.0.0.0", QWORKER_PORT)
    assert args.ray_address == "auto"
    advertised = {name for node in workers(config).values() for name in node["resources"]}
    assert args.replica_resource in advertised and args.replica_resource.startswith(REPLICA_RESOURCE), (
        f"--replica-resource {args.replica_resource!r}: replicas must ask for a qworker resource of the worker nodes"
    )
    assert args.replicas >= 1
    assert args.token_file is not None, "a service reachable from the network needs a token (--token-file)"
    assert str(args.token_file) in config["file_mounts"], "the token file must be shipped by file_mounts"


# -- simulator nodes ------------------------------------------------------------------------------


def test_every_worker_type_advertises_qworker_and_the_head_none(config):
    for name, node in workers(config).items():
        assert node["resources"].get(REPLICA_RESOURCE, 0) >= 1, f"{name} does not advertise {REPLICA_RESOURCE!r}"
    head = config["available_node_types"][config["head_node_type"]]
    assert REPLICA_RESOURCE not in head["resources"], "replicas must not land on the head"


def replica_nodes(config: dict, args) -> dict[str, dict]:
    """The node types whose nodes get a frontend: those offering the replica resource."""
    return {name: n for name, n in workers(config).items() if n["resources"].get(args.replica_resource, 0) >= 1}


def slots(node: dict, args) -> int:
    """Replicas of the service's shape (its resource, CPUs, GPUs) one node of this type holds."""
    res = node["resources"]
    fit = [res.get(args.replica_resource, 0)]
    if args.replica_cpus:
        fit.append(int(res.get("CPU", 0) // args.replica_cpus))
    if args.replica_gpus:
        fit.append(int(res.get("GPU", 0) // args.replica_gpus))
    return min(fit)


def test_every_frontends_replicas_fit_on_its_node(config):
    """A frontend's replicas are pinned to its node: --replicas (and --autoscale's MAX, and
    --max-replicas), times --frontends-per-node, must fit on one node of every type that gets a
    frontend, or some stay pending for good (no other node may take them)."""
    args = serve_args(config)
    chosen = replica_nodes(config, args)
    assert chosen, f"no node type offers {args.replica_resource!r}: no frontend would start"
    most = max(
        [args.replicas, args.max_replicas or 0] + ([int(args.autoscale.split(":")[1])] if args.autoscale else [])
    )
    most *= args.frontends_per_node  # each frontend of a node has replicas of its own
    for name, node in chosen.items():
        assert 1 <= most <= slots(node, args), f"{name} holds {slots(node, args)} replicas of this shape, not {most}"


def test_ray_up_brings_a_frontend_to_call(config):
    """Trainers need a frontend from the start: some node type it runs on is kept (min_workers),
    or the head's command asks for nodes (--nodes)."""
    args = serve_args(config)
    kept = sum(n.get("min_workers", 0) for n in replica_nodes(config, args).values())
    assert kept >= 1 or args.nodes >= 1, "no frontend until some node is launched by hand"


def test_node_resources_are_consistent(config):
    for name, node in workers(config).items():
        res = node["resources"]
        assert res[REPLICA_RESOURCE] <= res["CPU"], f"{name}: more qworker slots than CPUs"
        if res.get("GPU"):
            assert res[REPLICA_RESOURCE] == res["GPU"], f"{name}: one replica per GPU"
            assert node["docker"]["worker_image"].endswith("-gpu"), f"{name} has GPUs but a CPU image"
        else:
            assert "docker" not in node or not node["docker"].get("worker_image", "").endswith("-gpu")
    gpu_capacity = sum(n["max_workers"] * n["resources"].get("GPU", 0) for n in workers(config).values())
    planned = gpu_replicas_planned()
    assert gpu_capacity >= planned, (
        f"max_workers allow {gpu_capacity} GPUs, the plan (cluster/README.md) needs {planned}"
    )


def test_max_workers_bounds(prepared):
    nodes = prepared["available_node_types"]
    head = nodes[prepared["head_node_type"]]
    assert head["min_workers"] == head["max_workers"] == 0
    for name, node in workers(prepared).items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert prepared["max_workers"] >= sum(n["min_workers"] for n in nodes.values())
    assert prepared["max_workers"] == sum(n["max_workers"] for n in workers(prepared).values()), (
        "the global max_workers should be the sum of the types' (none capped by another)"
    )


# -- what gets installed --------------------------------------------------------------------------


def test_setup_installs_torch_then_this_project(prepared):
    torch_pin = re.search(r'"torch==([\w.+]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    here = Version(metadata.version("torch")).public  # the torch this checkout was installed with, less "+cpu"
    assert torch_pin == here, f"pyproject.toml pins torch=={torch_pin} but this checkout runs torch {here}"
    repo_mount = next(remote for remote, local in prepared["file_mounts"].items() if local in (".", "./"))
    assert (ROOT / "pyproject.toml").exists(), "file_mounts ships `.`: `ray up` must run from the repository root"
    for role in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in by Ray
        cmds = prepared[role]
        torch_at = [i for i, c in enumerate(cmds) if "pip install" in c and f"torch=={torch_pin}" in c]
        project_at = [i for i, c in enumerate(cmds) if re.search(rf"pip install .*-e {re.escape(repo_mount)}(\s|$)", c)]
        assert torch_at, f"{role}: no `pip install torch=={torch_pin}`"
        assert project_at, f"{role}: no `pip install -e {repo_mount}`"
        assert torch_at[0] < project_at[0], f"{role}: install torch before the project"


def test_the_cluster_runs_this_ray(config, prepared):
    """`ray up` needs the same Ray on this machine and on the nodes."""
    images = [config["docker"]["image"]] + [
        n["docker"]["worker_image"] for n in workers(config).values() if "worker_image" in n.get("docker", {})
    ]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), f"{image} is not Ray {ray.__version__}"
    assert any(f'"ray[default]=={ray.__version__}"' in c for c in prepared["setup_commands"])


# -- security -------------------------------------------------------------------------------------


def test_ray_token_auth_is_on(config):
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for cmd in [*starts, serve_command(config)]:
        assert "RAY_AUTH_MODE=token" in cmd, cmd


def test_the_qworker_port_is_not_open_to_the_world(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    covering = [r for r in rules if r["FromPort"] <= QWORKER_PORT <= r["ToPort"]]
    assert covering, "no inbound rule for the qworker port: trainers outside the cluster could not reach it"
    for rule in covering:
        sources = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        assert sources and not {"0.0.0.0/0", "::/0"} & set(sources), f"port {QWORKER_PORT} open to {sources}"
