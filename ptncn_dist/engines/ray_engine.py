"""Every layer its own Ray actor. The driver creates and places the actors, wires each to its
neighbours, then per segment hands layer 1 its inputs and every layer the mask, and collects the
loss sums. Activations and errors go from actor to actor; the driver never holds a weight
except when asked for them (checkpoints are written by the actors themselves)."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..core.spec import check_schedule
from ..core.schedule import Segment, finish
from .base import Engine, shard_name
from ..transports.messages import MessageError
from .compiled_graph import CompiledGraph
from .graph_worker import GraphWorker
from .heartbeat import Heartbeats, LayerHung
from .layer_actor import LayerWorker
from .placement import connect, layer_options, shutdown_ray


def _watched(method):
    """`method` under the heartbeat watch: a compiled graph's build and results are waited for
    in Ray calls that cannot be sliced, so a thread watches the beats meanwhile."""
    @functools.wraps(method)
    def watched(self, *args, **kwargs):
        with self.heartbeats.watching():
            return method(self, *args, **kwargs)
    return watched


def _one_line(exc: Exception) -> CheckpointError | None:
    """A layer's CheckpointError as the one line it said (the actor's traceback left out); None
    for any other failure."""
    cause = exc.as_instanceof_cause()
    if not isinstance(cause, CheckpointError):
        return None
    line = str(cause).splitlines()[-1]
    return CheckpointError(line.removeprefix(f"{CheckpointError.__module__}.{CheckpointError.__name__}: "))


class RayEngine(Engine):
    """Every layer of `specs` its own Ray actor, placed and wired as cfg.engine says; weights
    `params` (one dict per layer) or, by default, drawn by each actor from cfg.train.seed."""

    name = "ray"
    traces = True

    def __init__(self, cfg, specs, params: list[dict] | None = None):
        import ray
        self.ray, self.cfg, self.specs = ray, cfg, specs
        ec = cfg.engine
        if ec.compiled and ec.mode != "exact":
            raise ConfigError("engine.compiled = true runs the exact schedule; set engine.mode = 'exact' "
                              "or engine.compiled = false for the pipelined one")
        check_schedule(specs, ec.mode)
        self.compiled = ec.compiled
        self.started_ray = connect(ec, len(specs))
        self.options, self.pg = layer_options(ec, len(specs))
        self.threads = ec.blas_threads or max(1, int(ec.cpus_per_layer))
        self.max_batch = max(cfg.data.batch, cfg.data.eval_batch)
        self.heartbeats = Heartbeats(ray, ec.heartbeat_s, ec.hung_after_s)
        self.graph = None
        self._graph_stats = None
        self.graph_builds = 0
        self.link_offers: list = []
        self.actors = []
        self._make_actors()
        if params is not None:
            self.set_params(params)

    def _make_actors(self) -> None:
        ray, cfg = self.ray, self.cfg
        m, ec = cfg.model, cfg.engine
        args = (dataclasses.asdict(cfg.optim), cfg.train.seed, m.dtype, m.device, m.weight_sd,
                m.error_weight_sd, self.threads)
        kw = {"mode": ec.mode, "trace_steps": ec.trace_steps, "max_batch": self.max_batch,
              "heartbeat": self.heartbeats.next_generation(len(self.specs))}
        if self.compiled:
            cls = ray.remote(GraphWorker)
            self.actors = [cls.options(**opts).remote(spec, *args, **kw) for spec, opts in zip(self.specs, self.options)]
        else:
            cls = ray.remote(LayerWorker)
            self.actors = [cls.options(**opts, max_concurrency=64).remote(spec, *args, **kw)
                           for spec, opts in zip(self.specs, self.options)]
            n = len(self.actors)
            near = lambda i: {j + 1: self.actors[j] for j in (i - 1, i + 1) if 0 <= j < n}
            ray.get([a.connect.remote(self.actors[i - 1] if i else None, self.actors[i + 1] if i + 1 < n else None)
                     for i, a in enumerate(self.actors)])
            if ec.transport == "tcp":
                offers = self.link_offers = ray.get([a.open_links.remote() for a in self.actors])
                mine = lambda i: {l: offers[l - 1] for l in near(i)}
                ray.get([a.allow_links.remote(mine(i)) for i, a in enumerate(self.actors)])
                ray.get([a.connect_links.remote(mine(i)) for i, a in enumerate(self.actors)])
        self.placement = ray.get([a.where.remote() for a in self.actors])
        self.heartbeats.armed()

    # -- compiled graph ---------------------------------------------------------------------------
    def _teardown(self) -> None:
        if self.graph is not None:
            graph, self.graph = self.graph, None
            graph.teardown()

    def _fall_back_to_calls(self, exc: Exception) -> None:
        """Compiled graphs do not work here: the same layers (state carried over) as actors that
        exchange messages by ordinary calls."""
        import warnings
        warnings.warn(f"Ray compiled graph unavailable ({type(exc).__name__}: {exc}); "
                      f"falling back to ordinary actor calls", stacklevel=3)
        states = self.ray.get([a.state.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)
        self.compiled = False
        self._make_actors()
        self.load_layer_states(states)

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False, by_t=False):
        mask = np.ascontiguousarray(mask)
        if mask.shape[1] > self.max_batch:
            raise ConfigError(f"a batch of {mask.shape[1]} sequences is more than the layer actors take "
                              f"({self.max_batch}: the larger of data.batch and data.eval_batch)")
        seg = Segment.of(mask, t0, t1, learn=learn, t_prime=t_prime, keep_xhat=keep_xhat, by_t=by_t)
        try:
            outs = self._run_graph(seg, x, mask) if self.compiled else self._run_calls(seg, x, mask)
        except self.ray.exceptions.RayTaskError as exc:
            line = _one_line(exc)
            if line is None:
                raise
            raise line from None
        return ({}, []) if outs is None else finish(outs)

    def _run_calls(self, seg, x, mask) -> list[dict]:
        """Every actor runs the segment loop, messages going by actor calls or links."""
        x_ref = self.ray.put(x)
        return self._gather([a.run_segment.remote(x_ref if i == 0 else None, mask, seg)
                             for i, a in enumerate(self.actors)])

    @_watched
    def _run_graph(self, seg, x, mask) -> list[dict] | None:
        if self.graph is None:
            try:
                self.graph = CompiledGraph(self.ray, self.actors, self.specs, mask.shape[1], x[0].nbytes,
                                           self.cfg.engine.in_flight)
                self.graph_builds += 1
            except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
                self._fall_back_to_calls(exc)
                return self._run_calls(seg, x, mask)
        outs = self.graph.run(seg, x, mask, self.cfg.engine.segment_timeout_s)
        self._graph_stats = self.graph.stats
        return outs

    def _gather(self, refs):
        """All results, surfacing the first failure at once (a dead actor would otherwise leave
        its neighbours waiting on messages that never come), LayerHung within seconds of a
        layer falling silent, or a timeout when no layer finishes within
        engine.segment_timeout_s."""
        return self.heartbeats.get(refs, self.cfg.engine.segment_timeout_s)

    def failure_types(self) -> tuple:
        """Exceptions that mean a worker, node or channel was lost: the trainer recovers from them."""
        ex = self.ray.exceptions
        names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "ObjectLostError",
                 "GetTimeoutError", "RayChannelError", "NodeDiedError", "OwnerDiedError")
        from ..transports.links import LinkError
        return tuple(getattr(ex, n) for n in names if hasattr(ex, n)) + (MessageError, LinkError, LayerHung)

    def rebuild(self) -> None:
        """Replace every layer actor (dead or alive) with a fresh one on a live node; the caller
        then restores all layers from a checkpoint together."""
        ray = self.ray
        graph, self.graph = self.graph, None
        if graph is not None:
            try:
                graph.teardown(kill_actors=True)
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        if self.pg is not None:
            try:
                ray.util.remove_placement_group(self.pg)
            except Exception:
                pass
        quick = dataclasses.replace(self.cfg.engine, placement_timeout_s=min(self.cfg.engine.placement_timeout_s, 20.0))
        self.options, self.pg = layer_options(quick, len(self.specs), degrade=True)
        self._make_actors()

    def _call(self, method: str, *per_actor_args):
        """An ordinary call on every actor (after tearing a compiled graph down: its actors run
        nothing else while it lives)."""
        self._teardown()
        if per_actor_args:
            refs = [getattr(a, method).remote(*args) for a, args in zip(self.actors, zip(*per_actor_args))]
        else:
            refs = [getattr(a, method).remote() for a in self.actors]
        return self.heartbeats.get(refs)

    def layer_states(self):
        return self._call("state")

    def set_params(self, per_layer):
        self._call("set_params", per_layer)

    def load_layer_states(self, states):
        self._call("load_state", states)

    def save_shards(self, ckpt_dir):
        """Every layer writes its own shard; all writes end before any failure is raised, so the
        caller removes a failed checkpoint's staging directory only once nobody writes into it."""
        self._teardown()
        refs = [a.save_shard.remote(ckpt_dir, shard_name(l)) for l, a in enumerate(self.actors, start=1)]
        pending = refs
        while pending:
            _, pending = self.heartbeats.wait(pending, None)
        return self.ray.get(refs)

    def load_shards(self, ckpt_dir, manifest):
        try:
            self._call("load_shard", [ckpt_dir] * len(self.actors), manifest["shards"])
        except self.ray.exceptions.RayTaskError as exc:
            line = _one_line(exc)
            if line is None:
                raise
            raise line from None

    def nonfinite_layers(self) -> dict:
        found = self._call("nonfinite")
        return {l: names for l, names in enumerate(found, start=1) if names}

    def actor_stats(self) -> list[dict]:
        return self._call("stats")

    def stats(self):
        per = self._graph_stats if self.graph is not None and self._graph_stats else self.actor_stats()
        steps = max(1, per[0]["steps"])
        out = {"placement": [{k: p[k] for k in ("layer", "ip", "node_id", "device")} for p in self.placement]}
        for l, s in enumerate(per, start=1):
            out[f"layer{l}_sent_bytes_per_step"] = s["sent_bytes"] / steps
            out[f"layer{l}_recv_bytes_per_step"] = s["recv_bytes"] / steps
            for k in ("compute", "comm", "wait"):
                out[f"layer{l}_{k}_ms_per_step"] = 1e3 * s[f"{k}_s"] / steps
        return out

    def write_trace(self, path: str) -> int:
        """The recorded phases of every layer's first engine.trace_steps steps as a Chrome trace
        file (open in chrome://tracing or ui.perfetto.dev); returns the number of events."""
        import json
        events = [e for evs in self._call("trace_events") for e in evs]
        with open(path, "w") as fh:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, fh)
        return len(events)

    def close(self):
        ray = self.ray
        try:
            self._teardown()
        except Exception:
            pass
        for a in self.actors:
            ray.kill(a)
        for a in self.actors:
            try:
                ray.get(a.where.remote(), timeout=10)
            except Exception:
                pass
        self.actors = []
        self.heartbeats.close()
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None
        if self.started_ray:
            shutdown_ray()
            self.started_ray = False
