"""CuPy layers against NumPy layers (run on a machine with a CUDA GPU; skipped elsewhere)."""
import numpy as np
import pytest

from helpers import golden_files
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.engines.placement import shutdown_ray
from ptncn_dist.reference.golden import load_golden

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.is_available():
    pytest.skip("CuPy sees no CUDA GPU", allow_module_level=True)


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_golden_on_gpu(path):
    g = load_golden(path)
    engine = LocalEngine(engine_config(g.opt, device="gpu"), g.specs, g.init)
    T, B = g.mask.shape
    engine.run_segment(g.x, g.mask, 0, T, learn=True, t_prime=g.config["t_prime"])
    for l, layer in enumerate(engine.layers):
        for name, want in g.after[T - 1][l].items():
            np.testing.assert_allclose(cupy.asnumpy(layer.p[name]), want, atol=1e-9, rtol=0, err_msg=f"{name}{l + 1}")


def test_gpu_tokens_and_frames_match_numpy():
    from ptncn_dist.core.spec import init_params, layer_specs
    from ptncn_dist.core.optim import OptimConfig
    rng = np.random.default_rng(0)
    for sparse, x in ((True, rng.integers(0, 30, (8, 6))), (False, rng.random((8, 6, 30)))):
        specs = layer_specs(30, [32, 16], sparse_input=sparse, output="softmax" if sparse else "sigmoid")
        params = [init_params(s, 1, 0.2, 0.2, np.float64) for s in specs]
        engines = [LocalEngine(engine_config(OptimConfig("nag", 0.05, 0.9), device=d), specs, params) for d in ("cpu", "gpu")]
        sums = [e.run_segment(x, np.ones((8, 6)), 0, 8, learn=True, t_prime=1)[0] for e in engines]
        assert sums[0].keys() == sums[1].keys()
        a, b = engines[0].weights(), engines[1].weights()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-9, err_msg=k)


@pytest.mark.ray
def test_ray_gpu_layer_keeps_weights_on_device():
    import ray
    from ptncn_dist.config import load
    from ptncn_dist.data import open_streams
    from ptncn_dist.engines.factory import build_engine
    from helpers import NODE_IP
    from ptncn_dist.engines.ray_session import start_private
    start_private(NODE_IP, 2, num_gpus=1, log_to_driver=True, configure_logging=True)
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
        # the weights, the stacked block and the optimizer slots stay CuPy arrays in every actor
        # after training: only messages (bytes) and the weights() copies reach the host
        kinds = ray.get([a.__ray_call__.remote(_array_kinds_fn()) for a in gpu.actors])
        for l, k in enumerate(kinds, start=1):
            assert k and set(k.values()) == {"cupy"}, f"layer {l}: {k}"
        a, w = cpu.weights(), gpu.weights()
        for k in a:
            np.testing.assert_allclose(w[k], a[k], atol=1e-9, err_msg=k)
        gpu.close()
    finally:
        shutdown_ray()


def _array_kinds_fn():
    """A function (pickled by value, so a Ray actor can run it without this test module) giving
    the module of every weight and optimizer slot array of a layer host."""
    def kinds(host) -> dict:
        core = host.core
        out = {f"p.{k}": type(v).__module__.split(".")[0] for k, v in core.p.items()}
        out["stack"] = type(core.stack).__module__.split(".")[0]
        for k, slots in [*core.slots.items(), ("stack", core.stack_slots)]:
            for name, v in slots.items():
                if hasattr(v, "shape"):
                    out[f"slot.{k}.{name}"] = type(v).__module__.split(".")[0]
        return out
    return kinds


_array_kinds = _array_kinds_fn()


def test_local_engine_keeps_weights_on_device():
    from ptncn_dist.core.spec import init_params, layer_specs
    from ptncn_dist.core.optim import OptimConfig
    specs = layer_specs(30, [32, 16], sparse_input=False, output="sigmoid")
    params = [init_params(s, 1, 0.2, 0.2, np.float32) for s in specs]
    engine = LocalEngine(engine_config(OptimConfig("nag", 0.05, 0.9), np.float32, "gpu"), specs, params)
    x = (np.random.default_rng(0).random((6, 4, 30)) > 0.8).astype(np.float32)
    engine.run_segment(x, np.ones((6, 4), np.float32), 0, 6, learn=True, t_prime=1)
    for core in engine.layers:
        kinds = _array_kinds(type("Host", (), {"core": core})())
        assert set(kinds.values()) == {"cupy"}, kinds


def test_local_engine_float32_cupy_matches_numpy_after_300_steps():
    """float32, 300 training steps of 2 x 256 with Nesterov (the authors' optimizer) on Bouncing-
    MNIST-like frames: CuPy and NumPy weights agree to 1e-4 relative (Frobenius norm of the
    difference over that of the weight). Not Adam: with gradients near zero its step is +-lr
    whichever way rounding tips them, so float32 runs on two devices part by far more."""
    from ptncn_dist.core.spec import init_params, layer_specs
    from ptncn_dist.core.optim import OptimConfig
    rng = np.random.default_rng(0)
    T, B, D = 300, 16, 256
    x = (rng.random((T, B, D)) > 0.8).astype(np.float32)
    mask = np.ones((T, B), np.float32)
    specs = layer_specs(D, [256, 256], sparse_input=False, output="sigmoid")
    opt = OptimConfig("nag", 0.05, 0.9)
    engines = []
    for xp in (np, cupy):
        params = [init_params(s, 1, 0.05, 0.05, np.float32) for s in specs]
        e = LocalEngine(engine_config(opt, np.float32, "gpu" if xp is cupy else "cpu"), specs, params)
        for t0 in range(0, T, 50):
            e.run_segment(x, mask, t0, t0 + 50, learn=True, t_prime=1)
        engines.append(e)
    a, b = engines[0].weights(), engines[1].weights()
    assert a.keys() == b.keys()
    for k in a:
        assert np.all(np.isfinite(b[k])), k
        rel = np.linalg.norm(b[k] - a[k]) / max(np.linalg.norm(a[k]), 1e-30)
        assert rel < 1e-4, f"{k}: relative difference {rel:.2e}"
