"""Where the actors of each role run: one Ray placement group per role, one bundle per actor.

A bundle asks for ``<role>_cpus`` CPUs, ``<role>_gpus`` GPUs (times ``tensor_parallel_size`` for a rollout
engine, which holds all of its shards) and the role's custom resources (``resources.custom``, e.g.
``{rollout_gpu: 1}``). The custom resource is requested on top of the GPU count: the GPU count makes Ray give
the actor its devices (CUDA_VISIBLE_DEVICES), the custom resource pins it to the node type that advertises it,
so an autoscaler launches the right node type for each role.

Strategies: rollout and judge groups use PACK. The learner group uses ``resources.learner_strategy``: PACK
(default) keeps the DeepSpeed group on as few nodes as possible, so its ZeRO collectives stay on one node's
NVLink when the group fits there, and spans nodes only when it must; STRICT_PACK insists on a single node and
times out otherwise (for clusters whose inter-node network is too slow for ZeRO traffic). SPREAD is not used.

Before anything is reserved, ``check_fits`` compares the demand with the running cluster, or with what an
autoscaler can grow to (``resources.cluster_yaml``: an autoscaler YAML or a KubeRay manifest), and names every
resource that is short. A placement group that still cannot be met within ``resources.placement_timeout_s``
fails with a message naming the role and the missing resource, and the groups already made are removed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rapo_ray.config import JobConfig

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

ROLES = ("rollout", "learner", "judge")
_EPS = 1e-6  # Ray resolves resources to 1e-4; anything below this is rounding


class PlacementError(RuntimeError):
    """The job's actors do not fit the cluster, or their placement groups could not be reserved in time."""


@dataclass(frozen=True)
class RolePlacement:
    """The bundles (one per actor, all alike) and the placement strategy of one role."""

    role: str
    bundles: list[dict[str, float]]
    strategy: str

    def demand(self) -> dict[str, float]:
        """Total resources of the role's bundles."""
        out: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                out[k] = out.get(k, 0.0) + v
        return out


@dataclass(frozen=True)
class ClusterCapacity:
    """Resource totals of a cluster (now, or at its autoscaler's maximum) and the resources of each node kind."""

    totals: dict[str, float]
    nodes: list[dict[str, float]]  # one entry per node (running cluster) or node type (YAML); [] = unknown
    source: str  # for messages: "the running cluster", "the autoscaler maximum of cluster/aws.yaml"


def _role_counts(cfg: JobConfig, role: str) -> tuple[int, float, float]:
    r = cfg.resources
    if role == "rollout":
        return cfg.rollout.num_workers, r.rollout_cpus, r.rollout_gpus * cfg.rollout.tensor_parallel_size
    if role == "learner":
        return cfg.learner.num_learners, r.learner_cpus, r.learner_gpus
    if role == "judge":
        return cfg.judge.num_actors, r.judge_cpus, r.judge_gpus
    raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def role_placement(cfg: JobConfig, role: str) -> RolePlacement:
    """The placement of one role, from the config."""
    count, cpus, gpus = _role_counts(cfg, role)
    custom = {k: float(v) for k, v in cfg.resources.custom.get(role, {}).items()}
    bundle = {"CPU": float(cpus), "GPU": float(gpus), **custom}
    bundle = {k: v for k, v in bundle.items() if v > 0}
    if not bundle:
        raise PlacementError(f"a {role} actor asks for no resources (resources.{role}_cpus and {role}_gpus are 0 and "
                             f"resources.custom has no {role} entry); give it at least a fraction of a CPU")
    strategy = cfg.resources.learner_strategy if role == "learner" else "PACK"
    return RolePlacement(role, [dict(bundle) for _ in range(count)], strategy)


def plan_placement(cfg: JobConfig) -> dict[str, RolePlacement]:
    """Every role's placement: ``{"rollout": ..., "learner": ..., "judge": ...}``."""
    return {role: role_placement(cfg, role) for role in ROLES}


# -- what the cluster has ------------------------------------------------------------------------------------------

def capacity_from_ray() -> ClusterCapacity:
    """The resources of the running cluster this process is connected to (``ray.init`` must have run)."""
    import ray

    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    return ClusterCapacity({k: float(v) for k, v in ray.cluster_resources().items()}, nodes, "the running cluster")


def _max_totals(head: dict[str, float], workers: list[tuple[dict[str, float], int]],
                max_workers: int) -> dict[str, float]:
    """Upper bound of each resource when the autoscaler adds at most ``max_workers`` workers, per-type caps kept."""
    names = set(head).union(*(res for res, _ in workers))
    totals = {}
    for name in names:
        left, total = max_workers, head.get(name, 0.0)
        for res, cap in sorted(workers, key=lambda w: -w[0].get(name, 0.0)):
            take = min(cap, left)
            total += take * res.get(name, 0.0)
            left -= take
        totals[name] = total
    return totals


def _autoscaler_capacity(config: dict[str, Any], source: str) -> ClusterCapacity:
    types = config.get("available_node_types")
    head_type = config.get("head_node_type")
    if not isinstance(types, dict) or head_type not in types:
        raise PlacementError(f"{source}: needs available_node_types and a head_node_type that is one of them")
    shapes: dict[str, dict[str, float]] = {}
    for name, spec in types.items():
        res = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        if "CPU" not in res:
            raise PlacementError(f"{source}: node type '{name}' does not declare its resources (CPU, and GPU for GPU "
                                 "nodes); Ray only detects them at launch, so declare them to let rapo_ray check fits")
        shapes[name] = res
    global_max = int(config.get("max_workers", sum(int(t.get("max_workers", 0)) for t in types.values())))
    workers = [(shapes[n], int(types[n].get("max_workers", global_max))) for n in types if n != head_type]
    return ClusterCapacity(_max_totals(shapes[head_type], workers, global_max), list(shapes.values()), source)


def capacity_from_cluster_yaml(path: str | Path) -> ClusterCapacity:
    """What a cluster can grow to: an autoscaler YAML (``ray up``) or a KubeRay RayCluster/RayJob manifest."""
    p = Path(path)
    if not p.is_file():
        raise PlacementError(f"resources.cluster_yaml: {p} not found (relative paths are read from {Path.cwd()})")
    try:
        tree = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PlacementError(f"resources.cluster_yaml: invalid YAML in {p}: {e}") from None
    if not isinstance(tree, dict):
        raise PlacementError(f"resources.cluster_yaml: {p} is not a mapping")
    source = f"the autoscaler maximum of {p}"
    kind = tree.get("kind")
    if kind in ("RayCluster", "RayJob"):
        # The same translation KubeRay's in-tree autoscaler applies to the custom resource (private Ray API).
        from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

        spec = tree.get("spec", {}) if kind == "RayCluster" else tree.get("spec", {}).get("rayClusterSpec", {})
        cr = {"metadata": {"namespace": "default", **tree.get("metadata", {})}, "spec": spec}
        try:
            config = _derive_autoscaling_config_from_ray_cr(cr)
        except Exception as e:  # KeyError/ValueError/jsonschema errors from a malformed manifest
            raise PlacementError(f"resources.cluster_yaml: cannot read {kind} {p}: {e!r}") from None
        return _autoscaler_capacity(config, source)
    return _autoscaler_capacity(tree, source)


def cluster_capacity(cfg: JobConfig) -> ClusterCapacity:
    """``resources.cluster_yaml``'s maximum when the config names one, else the running cluster."""
    if cfg.resources.cluster_yaml:
        return capacity_from_cluster_yaml(cfg.resources.cluster_yaml)
    return capacity_from_ray()


# -- does it fit ---------------------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return str(int(x)) if abs(x - round(x)) < _EPS else f"{x:.3g}"


def _fmt_res(res: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in res.items()) + "}"


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(v <= node.get(k, 0.0) + _EPS for k, v in need.items())


def _node_problem(what: str, need: dict[str, float], cap: ClusterCapacity) -> str | None:
    """None if some node can hold ``need``; else which resources no single node has enough of."""
    if not cap.nodes or any(_fits(need, n) for n in cap.nodes):
        return None
    short = [f"{k} {_fmt(v)} (largest node: {_fmt(max(n.get(k, 0.0) for n in cap.nodes))})"
             for k, v in need.items() if v > max(n.get(k, 0.0) for n in cap.nodes) + _EPS]
    detail = ", ".join(short) if short else "no single node has all of them together"
    return f"{what} needs {_fmt_res(need)} on one node, but no node in {cap.source} offers that: {detail}"


def fit_problems(plan: dict[str, RolePlacement], cap: ClusterCapacity) -> list[str]:
    """Every way ``plan`` cannot fit ``cap`` (empty when it fits)."""
    problems = []
    need: dict[str, float] = {}
    for rp in plan.values():
        for k, v in rp.demand().items():
            need[k] = need.get(k, 0.0) + v
    for k, v in need.items():
        have = cap.totals.get(k, 0.0)
        if v > have + _EPS:
            parts = ", ".join(f"{rp.role} {len(rp.bundles)} x {_fmt(rp.bundles[0][k])}"
                              for rp in plan.values() if k in rp.bundles[0])
            problems.append(f"{k}: needs {_fmt(v)} ({parts}), {cap.source} has {_fmt(have)}")
    for rp in plan.values():  # every role has at least one actor (the config enforces it)
        problem = _node_problem(f"each {rp.role} actor", rp.bundles[0], cap)
        if problem:
            problems.append(problem)
        elif rp.strategy == "STRICT_PACK" and len(rp.bundles) > 1:
            problem = _node_problem(f"the {rp.role} group (STRICT_PACK, {len(rp.bundles)} actors)", rp.demand(), cap)
            if problem:
                problems.append(problem + "; use learner_strategy: PACK to let it span nodes")
    return problems


def check_fits(cfg: JobConfig, cluster_resources: dict[str, float] | None = None,
               autoscaler_max: dict[str, float] | None = None) -> None:
    """Raise ``PlacementError`` naming each missing resource (needed vs available) if the actors cannot fit.

    Checked against ``autoscaler_max`` or ``cluster_resources`` (resource totals) when given, else against
    ``resources.cluster_yaml``'s maximum (totals and node shapes), else against the running cluster.
    """
    if autoscaler_max is not None:
        cap = ClusterCapacity({k: float(v) for k, v in autoscaler_max.items()}, [], "the autoscaler maximum")
    elif cluster_resources is not None:
        cap = ClusterCapacity({k: float(v) for k, v in cluster_resources.items()}, [], "the cluster")
    else:
        cap = cluster_capacity(cfg)
    problems = fit_problems(plan_placement(cfg), cap)
    if problems:
        raise PlacementError(f"job '{cfg.name}' does not fit {cap.source}:\n  " + "\n  ".join(problems))


# -- reserving -----------------------------------------------------------------------------------------------------

def _timeout_message(rp: RolePlacement, waited: float) -> str:
    import ray

    avail, total = ray.available_resources(), ray.cluster_resources()
    head = (f"placement group for role '{rp.role}' ({len(rp.bundles)} x {_fmt_res(rp.bundles[0])}, {rp.strategy}) "
            f"not ready after {waited:.1f}s")
    short = [f"{k} (needs {_fmt(v)}, available {_fmt(avail.get(k, 0.0))} of {_fmt(total.get(k, 0.0))})"
             for k, v in rp.demand().items() if v > avail.get(k, 0.0) + _EPS]
    if short:
        why = "missing " + ", ".join(short)
    else:
        cap = capacity_from_ray()
        why = _node_problem(f"each {rp.role} actor", rp.bundles[0], cap)
        if why is None and rp.strategy == "STRICT_PACK":
            why = _node_problem(f"the {rp.role} group", rp.demand(), cap)
        why = why or "enough is free in total but not on the nodes the strategy needs (fragmented across nodes)"
    return (f"{head}: {why}. With an autoscaler, no node type offers it or max_workers is reached; "
            "raise resources.placement_timeout_s if nodes are still starting.")


def remove_placement_groups(pgs: dict[str, PlacementGroup]) -> None:
    """Release the groups (idempotent; a group already gone is skipped)."""
    from ray.util.placement_group import remove_placement_group

    for pg in pgs.values():
        try:
            remove_placement_group(pg)
        except Exception:  # already removed, or the cluster is gone: nothing left to release
            pass


def create_placement_groups(cfg: JobConfig) -> dict[str, PlacementGroup]:
    """Reserve one placement group per role and wait for all of them (``resources.placement_timeout_s`` in all).

    All groups are requested at once, so an autoscaler sees the whole demand and starts every node type in
    parallel. On timeout (or any error) the groups made here are removed and ``PlacementError`` names the role
    and the missing resource.
    """
    import ray
    from ray.util.placement_group import placement_group

    plan = plan_placement(cfg)
    pgs: dict[str, PlacementGroup] = {}
    start = time.monotonic()
    deadline = start + cfg.resources.placement_timeout_s
    try:
        for role, rp in plan.items():
            pgs[role] = placement_group(rp.bundles, strategy=rp.strategy, name=f"{cfg.name}-{role}")
        for role, pg in pgs.items():
            # ray.wait, not pg.wait: the latter truncates its timeout to whole seconds.
            ready, _ = ray.wait([pg.ready()], timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise PlacementError(_timeout_message(plan[role], time.monotonic() - start))
    except BaseException:
        remove_placement_groups(pgs)
        raise
    return pgs


def actor_options(cfg: JobConfig, role: str, placement: dict[str, PlacementGroup] | PlacementGroup | None = None,
                  index: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``ActorClass.options(...)``: the actor takes exactly its bundle.

    ``placement`` is what ``create_placement_groups`` returned (or one role's group); the actor is scheduled into
    bundle ``index``. With ``placement=None`` it gets the same resources without a placement group.
    """
    rp = role_placement(cfg, role)
    if not 0 <= index < len(rp.bundles):
        raise IndexError(f"{role} has {len(rp.bundles)} actors in its placement, asked for bundle {index}")
    bundle = rp.bundles[index]
    opts: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0.0), "num_gpus": bundle.get("GPU", 0.0),
                            "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}}
    threads = {"rollout": cfg.resources.rollout_threads, "learner": cfg.resources.learner_threads}.get(role)
    if threads:  # merged by Ray with the job's runtime_env (working_dir, other env_vars)
        opts["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    pg = placement[role] if isinstance(placement, dict) else placement
    if pg is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                       placement_group_bundle_index=index)
    return opts
