"""`ptncn chaos`: the fault-injection drill. A run on the Ray engine has layer-actor processes
killed (SIGKILL, by pid, on whatever node they run) or stopped (SIGSTOP: alive but hung), or
whole worker nodes stopped while it trains; it must recover every time and end on exactly the
weights of an uninterrupted run.

    ptncn chaos --faults 3                       kill random layer actors on a local Ray
    ptncn chaos --fault stop --faults 2          SIGSTOP random layer actors (caught by heartbeats)
    ptncn chaos --kill node --nodes 3            stop worker nodes of a local 3-node cluster
    ptncn chaos --config FILE --set ... --steps N --faults K   at any scale
    ptncn chaos --at 100,300                     faults at exactly steps 100 and 300

Each fault fires from a trainer callback at the end of the training segment that reaches its
step (Trainer's `callbacks`), so where it lands does not depend on timing.

Prints: faults injected, recoveries, steps replayed, seconds to recover, and the largest
difference between the final weights and the uninterrupted run's; exits 1 unless every fault
fired, was recovered, and the weights are equal.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import time

import numpy as np

from ..config import load


def kill_actor_process(node_id: str, pid: int, sig: int = signal.SIGKILL, only_if_stopped: bool = False) -> bool:
    """Send `sig` (SIGKILL, or SIGSTOP to hang it) to process `pid` on node `node_id`, from a
    zero-CPU task placed on that node."""
    import ray
    from ..engines.heartbeat import signal_process
    return ray.get(signal_process(node_id, pid, sig, only_if_stopped), timeout=120)


def fault_steps(steps: int, faults: int, every: int, seed: int) -> list[int]:
    """`faults` distinct steps at which the drill fires, drawn by `seed` between 15% and 85% of
    the run, each a multiple of `every` (train.log_every: a segment ends there, so a fault fires
    exactly at it). Fewer when the run has fewer such steps."""
    lo, hi = max(1, int(0.15 * steps / every)), max(1, int(0.85 * steps / every))
    choices = [k * every for k in range(lo, hi + 1) if k * every < steps]
    return sorted(random.Random(seed).sample(choices, min(faults, len(choices))))


class FaultInjector:
    """A Trainer callback (`Trainer(..., callbacks=[injector])`) that injects one fault at each
    step of `at_steps`: at the end of the first training segment that reaches the step (once the
    previous fault has been recovered) it kills a random layer's process by pid (with `stop`,
    SIGSTOPs it instead: alive but hung; with `kill_node`, stops the node a random layer runs
    on, never the head). It runs in the trainer's thread between two engine calls, so where a
    fault lands does not depend on timing: `injected[i]["at_step"]` is the step it fired at
    (`at_steps[i]` when that step ends a segment, i.e. is a multiple of train.log_every)."""

    def __init__(self, at_steps, seed: int = 0, kill_node=None, head_ip: str | None = None,
                 stop: bool = False):
        self.at_steps, self.rng = sorted(at_steps), random.Random(seed)
        self.kill_node, self.head_ip, self.sig = kill_node, head_ip, signal.SIGSTOP if stop else signal.SIGKILL
        self.injected: list[dict] = []

    def __call__(self, trainer) -> None:
        k = len(self.injected)
        if k >= len(self.at_steps) or trainer.recoveries < k or trainer.step < self.at_steps[k]:
            return
        placement = trainer.engine.placement
        if self.kill_node is not None:
            targets = [p for p in placement if p["ip"] != self.head_ip]
            if not targets:
                return
            victim = self.rng.choice(targets)
            self.kill_node(victim["ip"])
        else:
            victim = self.rng.choice(placement)
            kill_actor_process(victim["node_id"], victim["pid"], self.sig)
            if self.sig == signal.SIGKILL:
                _wait_dead(victim)
        what = "node" if self.kill_node else "actor process" + (" (stopped)" if self.sig == signal.SIGSTOP else "")
        self.injected.append({"at_step": trainer.step, "layer": victim["layer"], "ip": victim["ip"],
                              "pid": victim["pid"], "node_id": victim["node_id"], "what": what})


def _wait_dead(victim: dict, timeout: float = 10.0) -> None:
    """Until a SIGKILLed layer process on this machine is gone (or a zombie): the next engine
    call then meets a dead actor, never one still finishing its last instructions."""
    from ..engines.ray_session import binds_to_loopback
    if not (victim["ip"].startswith("127.") or binds_to_loopback(victim["ip"])):
        return  # another machine: Ray reports the death to the next call
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{victim['pid']}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.01)


def drill(cfg, faults: int, seed: int = 0, kill_node=None, head_ip=None, run_dir: str | None = None,
          log=print, stop: bool = False, at_steps=None) -> dict:
    """One uninterrupted reference run (single-process engine) and one run on `cfg`'s Ray engine
    with faults (`stop`: layer processes SIGSTOPped, not killed) fired at `at_steps` (default:
    `faults` steps drawn by `seed`, see fault_steps) through a trainer callback; returns the
    figures."""
    from ..trainer import Trainer
    quiet = lambda *_: None
    if at_steps is None:
        at_steps = fault_steps(cfg.train.steps, faults, cfg.train.log_every, seed)
    ref = Trainer(_with_engine(cfg, "local"), None, log=quiet)
    ref.run()
    run_dir = run_dir or tempfile.mkdtemp(prefix="ptncn-chaos-")
    injector = FaultInjector(at_steps, seed, kill_node, head_ip, stop)
    trainer = Trainer(cfg, run_dir, log=log, callbacks=[injector])
    t0 = time.monotonic()
    try:
        trainer.run()
    finally:
        _end_stopped(injector.injected)
        elapsed = time.monotonic() - t0
        # a fault whose failure the run did not meet (a hung layer's last segment) is recovered here
        a, b = ref.engine.weights(), trainer.recovery.guarded(trainer.engine.weights)
        trainer.close()
        ref.close()
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    recs = trainer.recovery_log
    return {"faults_injected": len(injector.injected), "recoveries": len(recs),
            "steps_replayed": sum(r["steps_replayed"] for r in recs),
            "seconds_to_recover": [r["seconds"] for r in recs],
            "seconds_to_notice": [r.get("detection_s", 0.0) for r in recs],
            "max_final_weight_difference": diff, "steps": trainer.step, "seconds": round(elapsed, 2),
            "fault_steps": list(injector.at_steps), "faults": injector.injected, "recovery_log": recs,
            "run_dir": run_dir}


def _end_stopped(injected: list[dict]) -> None:
    """SIGKILL every process the drill stopped (the engine kills a hung layer's process; this
    covers one stopped too late for the run to notice)."""
    for fault in injected:
        if fault["what"].endswith("(stopped)"):
            try:
                kill_actor_process(fault["node_id"], fault["pid"], only_if_stopped=True)
            except Exception:
                pass


def _with_engine(cfg, name: str):
    from dataclasses import replace
    return replace(cfg, engine=replace(cfg.engine, name=name), train=replace(cfg.train, progress=False,
                                                                                plots=False))


def _steps_list(text: str) -> list[int]:
    try:
        steps = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of steps: {text!r}") from None
    if any(v <= 0 for v in steps) or len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"steps must be distinct and positive: {text!r}")
    return steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ptncn chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a TOML config file (default: a small drill: model.hidden=[64,48,32], "
                   "32x32 frames, float64, a checkpoint every 20 steps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, as in ptncn train (repeatable)")
    p.add_argument("--steps", type=int, default=600, help="training steps of each run (default 600)")
    p.add_argument("--faults", type=int, default=3, help="faults to inject during the run (default 3)")
    p.add_argument("--kill", choices=["actor", "node"], default="actor",
                   help="what a fault stops: a layer actor process or a worker node of a local cluster")
    p.add_argument("--fault", choices=["kill", "stop"], default="kill",
                   help="with --kill actor: SIGKILL the process (it dies) or SIGSTOP it (alive but hung: caught "
                        "by the heartbeats after engine.hung_after_s)")
    p.add_argument("--nodes", type=int, default=3, help="with --kill node: nodes of the local cluster")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (when and which layer)")
    p.add_argument("--at", type=_steps_list, metavar="STEP[,STEP...]",
                   help="steps at which the faults fire, one each (default: --faults steps drawn by --seed, "
                        "multiples of train.log_every); a fault fires at the end of the first training "
                        "segment that reaches its step")
    p.add_argument("--run-dir", help="run directory of the faulted run (default: a new temporary one)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.at and max(args.at) >= args.steps:
        p.error(f"--at: every step must come before the run's end (--steps {args.steps})")
    defaults = ["model.hidden=[64,48,32]", "data.frame=32", "data.batch=8", "data.seq_len=10",
                'model.dtype="float64"', "train.eval_batches=1", "train.eval_every=0", "train.log_every=20",
                "train.checkpoint_every=20", "train.plots=false", "train.progress=false", "train.max_failures=-1",
                "engine.cpus_per_layer=0.5"]
    overrides = ([] if args.config else defaults) + args.overrides + ['engine.name="ray"', f"train.steps={args.steps}"]
    cluster = None
    kill_node = head_ip = None
    if args.kill == "node":
        from .local_cluster import LocalCluster
        cluster = LocalCluster(nodes=args.nodes, cpus_per_node=1).start()
        os.environ.update(cluster.env())
        head_ip = cluster.ip(0)
        overrides += [f'engine.address="{cluster.address}"', f'engine.node_ip="{head_ip}"',
                      'engine.placement="spread"']
        by_ip = {cluster.ip(i): i for i in range(cluster.n)}
        kill_node = lambda ip: cluster.stop_node(by_ip[ip], hard=True)
    try:
        cfg = load(args.config, overrides)
        res = drill(cfg, args.faults, args.seed, kill_node, head_ip, args.run_dir,
                    log=(lambda *_: None) if args.json else print, stop=args.fault == "stop" and kill_node is None,
                    at_steps=args.at)
    finally:
        if cluster is not None:
            cluster.stop()
    if args.json:
        print(json.dumps(res))
    else:
        for k in ("faults_injected", "recoveries", "steps_replayed", "seconds_to_recover", "seconds_to_notice",
                  "max_final_weight_difference", "steps", "seconds"):
            print(f"{k:28s} {res[k]}")
        for f in res["faults"]:
            print(f"  fault at step {f['at_step']}: {f['what']} of layer {f['layer']} on {f['ip']} (pid {f['pid']})")
    fired = res["faults_injected"] == len(res["fault_steps"]) == res["recoveries"]
    return 0 if fired and res["max_final_weight_difference"] < 1e-9 else 1
