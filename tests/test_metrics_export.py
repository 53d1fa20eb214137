"""The per-layer metrics reach a Prometheus scrape of the Ray node (needs ray[default], which the
test extra installs): a run's layer actors publish compute / message / wait seconds, bytes and
steps through Ray's metrics API, and the node's metrics endpoint serves them."""
import re
import socket
import time
import urllib.request

import numpy as np
import pytest

from ptncn_dist.config import load
from helpers import NODE_IP, local_ray
from ptncn_dist.engines.factory import build_engine

pytestmark = pytest.mark.ray

pytest.importorskip("aiohttp", reason="the Ray metrics agent comes with ray[default]")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict:
    """{(metric, layer): value} for the ptncn_layer_* series on a Prometheus endpoint."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^ray_(ptncn_layer_\w+)\{(.*)\} (\S+)$', line)
        if m:
            layer = re.search(r'layer="(\d+)"', m.group(2))
            if layer:
                out[(m.group(1), int(layer.group(1)))] = float(m.group(3))
    return out


def test_layer_metrics_reach_a_prometheus_scrape():
    port = free_port(NODE_IP)
    with local_ray(4, _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 500}):
        cfg = load(None, ["model.hidden=[12, 8]", 'engine.name="ray"', "engine.cpus_per_layer=0.5"])
        engine = build_engine(cfg, 16, "frames")
        try:
            x = (np.random.default_rng(0).random((7, 3, 16)) > 0.5).astype(np.float32)
            engine.run_segment(x, np.ones((7, 3), np.float32), 0, 7, learn=True, t_prime=1)
            stats = engine.actor_stats()
            url, deadline, seen = f"http://{NODE_IP}:{port}/metrics", time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                seen = scrape(url)
                if all(seen.get(("ptncn_layer_steps_total", l)) == 7 for l in (1, 2)):
                    break
                time.sleep(0.5)
        finally:
            engine.close()
    for l, st in enumerate(stats, start=1):
        assert seen.get(("ptncn_layer_steps_total", l)) == 7, sorted(seen)
        assert seen[("ptncn_layer_bytes_sent_total", l)] == st["sent_bytes"] > 0
        assert seen[("ptncn_layer_compute_seconds_total", l)] == pytest.approx(st["compute_s"])
        assert ("ptncn_layer_wait_seconds_total", l) in seen and ("ptncn_layer_comm_seconds_total", l) in seen
