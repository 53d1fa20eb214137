"""CuPy layers against NumPy layers (run on a machine with a CUDA GPU; skipped elsewhere)."""
import numpy as np
import pytest

from conftest import golden_files
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.placement import shutdown_ray
from ptncn_dist.golden import load_golden

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.is_available():
    pytest.skip("CuPy sees no CUDA GPU", allow_module_level=True)


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_golden_on_gpu(path):
    g = load_golden(path)
    engine = LocalEngine(g.specs, g.init, g.opt, cupy, np.float64)
    T, B = g.mask.shape
    engine.run_segment(g.x, g.mask, 0, T, learn=True, t_prime=g.config["t_prime"])
    for l, layer in enumerate(engine.layers):
        for name, want in g.after[T - 1][l].items():
            np.testing.assert_allclose(cupy.asnumpy(layer.p[name]), want, atol=1e-9, rtol=0, err_msg=f"{name}{l + 1}")


def test_gpu_tokens_and_frames_match_numpy():
    from ptncn_dist.layer import init_params, layer_specs
    from ptncn_dist.optim import OptimConfig
    rng = np.random.default_rng(0)
    for sparse, x in ((True, rng.integers(0, 30, (8, 6))), (False, rng.random((8, 6, 30)))):
        specs = layer_specs(30, [32, 16], sparse_input=sparse, output="softmax" if sparse else "sigmoid")
        params = [init_params(s, 1, 0.2, 0.2, np.float64) for s in specs]
        engines = [LocalEngine(specs, params, OptimConfig("nag", 0.05, 0.9), xp, np.float64) for xp in (np, cupy)]
        sums = [e.run_segment(x, np.ones((8, 6)), 0, 8, learn=True, t_prime=1)[0] for e in engines]
        assert sums[0].keys() == sums[1].keys()
        a, b = engines[0].weights(), engines[1].weights()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-9, err_msg=k)


def test_ray_gpu_layer_keeps_weights_on_device():
    import ray
    from ptncn_dist.config import load
    from ptncn_dist.data import open_streams
    from ptncn_dist.engines.factory import build_engine
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.2")
    try:
        sets = ["model.hidden=[32,16]", "data.frame=32", "data.batch=4", 'model.dtype="float64"']
        cfg = load(None, sets + ['engine.name="ray"', 'model.device="gpu"', "engine.gpus_per_layer=0.5"])
        streams = open_streams(cfg.data, 0)
        gpu = build_engine(cfg, streams.train.dim, "frames")
        cpu = build_engine(load(None, sets), streams.train.dim, "frames")
        b = streams.train.batch(0)
        for e in (gpu, cpu):
            e.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=1)
        assert all(p["device"] == "gpu" and p["gpu_ids"] for p in gpu.placement)
        a, w = cpu.weights(), gpu.weights()
        for k in a:
            np.testing.assert_allclose(w[k], a[k], atol=1e-9, err_msg=k)
        gpu.close()
    finally:
        shutdown_ray()
