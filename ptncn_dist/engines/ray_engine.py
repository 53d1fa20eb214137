"""Every layer its own Ray actor. The driver creates and places the actors, wires each to its
neighbours, then per segment hands layer 1 its inputs and every layer the mask, and collects the
loss sums. Activations and errors go from actor to actor; the driver never holds a weight
except when asked for them (checkpoints are written by the actors themselves)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CheckpointError
from .base import Engine, StepDiverged, shard_name, token_ids
from .layer_actor import LayerWorker
from .placement import connect, layer_options


class RayEngine(Engine):
    name = "ray"

    def __init__(self, cfg, specs):
        import ray
        self.ray, self.cfg, self.specs = ray, cfg, specs
        ec = cfg.engine
        self.started_ray = connect(ec, len(specs))
        self.options, self.pg = layer_options(ec, len(specs))
        threads = ec.blas_threads or max(1, int(ec.cpus_per_layer))
        self.actor_cls = ray.remote(LayerWorker)
        self.actors = []
        self._make_actors(threads)
        self._steps_done = 0

    def _make_actors(self, threads: int) -> None:
        ray, cfg = self.ray, self.cfg
        m = cfg.model
        self.actors = [
            self.actor_cls.options(**opts, max_concurrency=64).remote(
                spec, dataclasses.asdict(cfg.optim), cfg.train.seed, m.dtype, m.device, m.weight_sd,
                m.error_weight_sd, threads)
            for spec, opts in zip(self.specs, self.options)]
        n = len(self.actors)
        ray.get([a.connect.remote(self.actors[i - 1] if i else None, self.actors[i + 1] if i + 1 < n else None)
                 for i, a in enumerate(self.actors)])
        self.placement = ray.get([a.where.remote() for a in self.actors])

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False):
        ray = self.ray
        if x.dtype.kind in "iu":
            x = token_ids(x, mask)
        mask = np.ascontiguousarray(mask)
        x_ref = ray.put(x)
        refs = [a.run_segment.remote(x_ref if i == 0 else None, mask, t0, t1, learn, t_prime, keep_xhat)
                for i, a in enumerate(self.actors)]
        results = self._gather(refs)
        self._steps_done += t1 - t0
        first = results[0]
        if first["diverged"] is not None:
            raise StepDiverged(first["diverged"])
        return first["sums"], first["xhats"]

    def _gather(self, refs):
        """All results, surfacing the first failure at once (a dead actor would otherwise leave
        its neighbours waiting on messages that never come)."""
        ray, pending = self.ray, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])
        return ray.get(refs)

    def layer_states(self):
        return self.ray.get([a.state.remote() for a in self.actors])

    def load_layer_states(self, states):
        self.ray.get([a.load_state.remote(st) for a, st in zip(self.actors, states)])

    def save_shards(self, ckpt_dir):
        return self.ray.get([a.save_shard.remote(ckpt_dir, shard_name(l))
                             for l, a in enumerate(self.actors, start=1)])

    def load_shards(self, ckpt_dir, manifest):
        try:
            self.ray.get([a.load_shard.remote(ckpt_dir, rec) for a, rec in zip(self.actors, manifest["shards"])])
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, CheckpointError):
                raise CheckpointError(str(cause).splitlines()[-1]) from None
            raise

    def nonfinite_layers(self) -> dict:
        found = self.ray.get([a.nonfinite.remote() for a in self.actors])
        return {l: names for l, names in enumerate(found, start=1) if names}

    def actor_stats(self) -> list[dict]:
        return self.ray.get([a.stats.remote() for a in self.actors])

    def stats(self):
        per = self.actor_stats()
        steps = max(1, per[0]["steps"])
        out = {"placement": [{k: p[k] for k in ("layer", "ip", "node_id", "device")} for p in self.placement]}
        for l, s in enumerate(per, start=1):
            out[f"layer{l}_sent_bytes_per_step"] = s["sent_bytes"] / steps
            out[f"layer{l}_recv_bytes_per_step"] = s["recv_bytes"] / steps
        return out

    def close(self):
        ray = self.ray
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
