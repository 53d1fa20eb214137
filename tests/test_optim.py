"""Adam against a plain reference: row blocks, the fused kernel, token rows, clip scales, threads,
and its state through a checkpoint."""
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ptncn_dist.core import adam_kernel, optim
from ptncn_dist.core.optim import OptimConfig

HAVE_NUMBA = adam_kernel._fused() is not None if adam_kernel.USE_NUMBA else False
KERNELS = ["numpy"] + (["numba"] if HAVE_NUMBA else [])
TOL = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-13)}


class RefAdam:
    """Adam written out plainly (Kingma & Ba, Algorithm 1 with the bias correction folded into
    the step size, eps outside the square root), on a dense gradient."""

    def __init__(self, p, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps = p.copy(), lr, b1, b2, eps
        self.m, self.v, self.t = np.zeros_like(p), np.zeros_like(p), 0

    def step(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        step = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        self.p = self.p - step * (self.m / (np.sqrt(self.v) + self.eps))


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.setattr(adam_kernel, "USE_NUMBA", request.param == "numba")
    return request.param


def check(ref, p, slots, dtype):
    np.testing.assert_allclose(p, ref.p, **TOL[dtype])
    np.testing.assert_allclose(slots["m"], ref.m, **TOL[dtype])
    np.testing.assert_allclose(slots["v"], ref.v, **TOL[dtype])
    assert slots["t"] == ref.t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("block_bytes", [1 << 20, 1000])
@pytest.mark.parametrize("tiny", [True, False])
def test_adam_outer_and_rows_match_reference(kernel, monkeypatch, dtype, threads, order, block_bytes, tiny):
    """Many steps of low-rank (apply_outer, clip scales folded in), dense (apply) and token-row
    (apply_rows) updates, on one weight, equal the plain rule; with small blocks the rows split
    into many blocks and a ragged last one; a low-rank update of a weight this small takes the
    one-loop kernel (`tiny`) or, with it off, the blocks."""
    monkeypatch.setattr(optim, "_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(adam_kernel, "TINY", adam_kernel.TINY if tiny else 0)
    rng = np.random.default_rng(0)
    n_in, n_out, B = 37, 23, 5
    cfg = OptimConfig("adam", 0.01)
    p = np.asarray(rng.standard_normal((n_in, n_out)), dtype=dtype, order=order)
    ref = RefAdam(p, cfg.lr)
    slots = optim.init_slots(cfg, p, np)
    assert set(slots) == {"m", "v", "t"}
    with threadpool_limits(threads, user_api="blas"):
        for i in range(40):
            kind = ("outer", "rows", "dense", "outer", "empty")[i % 5]
            if kind == "outer":
                a, b = (rng.standard_normal((B, k)).astype(dtype) for k in (n_in, n_out))
                scale = float(rng.uniform(0.05, 1.0))
                optim.apply_outer(cfg, p, a, b, scale, slots, np)
                g = scale * (a.T.astype(np.float64) @ b)
            elif kind == "dense":
                g = rng.standard_normal((n_in, n_out)).astype(dtype)
                optim.apply(cfg, p, g, slots, np, scale=0.3)
                g = 0.3 * g.astype(np.float64)
            else:
                rows = rng.permutation(n_in)[: 0 if kind == "empty" else 7]
                g_rows = rng.standard_normal((rows.size, n_out)).astype(dtype)
                optim.apply_rows(cfg, p, rows, g_rows, slots, np)
                g = np.zeros((n_in, n_out))
                g[rows] = g_rows
            ref.step(g.astype(dtype))
            check(ref, p, slots, dtype)
    assert p.dtype == dtype and p.flags[order + "_CONTIGUOUS"]
    assert all(v.dtype == dtype for k, v in slots.items() if hasattr(v, "dtype"))


@pytest.mark.skipif(not HAVE_NUMBA, reason="needs Numba")
def test_tiny_weights_take_the_one_loop_update():
    """A low-rank Adam update of a tiny weight runs in one compiled loop (no block scratch is
    made), a larger one in blocks; both equal the plain rule."""
    rng = np.random.default_rng(1)
    cfg = OptimConfig("adam", 0.01)
    for shape, tiny in (((16, 8), True), ((200, 100), False)):
        p = rng.standard_normal(shape)
        ref, slots = RefAdam(p, cfg.lr), optim.init_slots(cfg, p, np)
        a, b = rng.standard_normal((4, shape[0])), rng.standard_normal((4, shape[1]))
        optim.apply_outer(cfg, p, a, b, 0.5, slots, np)
        ref.step(0.5 * a.T @ b)
        check(ref, p, slots, np.float64)
        assert ("_g" not in slots) == tiny


def test_adam_on_a_vector_and_a_strided_view(kernel):
    """Arrays that cannot be row-blocked (1-D, a strided view) take the whole-array path."""
    rng = np.random.default_rng(1)
    cfg = OptimConfig("adam", 0.02)
    for p in (rng.standard_normal(9), rng.standard_normal((8, 12))[:, ::2]):
        ref = RefAdam(p, cfg.lr)
        slots = optim.init_slots(cfg, p, np)
        for _ in range(5):
            g = rng.standard_normal(p.shape)
            optim.apply(cfg, p, g, slots, np, scale=0.5)
            ref.step(0.5 * g)
        check(ref, p, slots, np.float64)


def test_block_kernels_agree():
    """The fused kernel and the NumPy passes give the same block update (float32)."""
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((64, 50)).astype(np.float32) for _ in range(3)]
    arrays[2] = np.abs(arrays[2])
    g = rng.standard_normal((64, 50)).astype(np.float32)
    out = []
    for fused in (True, False):
        p, m, v = (a.copy() for a in arrays)
        adam_kernel.USE_NUMBA = fused
        try:
            adam_kernel.adam_block(p, m, v, g.copy(), 0.9, 0.999, 1e-8, 1e-3, np)
        finally:
            adam_kernel.USE_NUMBA = True
        out.append((p, m, v))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adam_state_survives_a_checkpoint(tmp_path, kernel):
    """Save shards mid-run (slots m, v, t only, no scratch), load them into a fresh engine, and
    both runs go on identically."""
    from ptncn_dist import checkpoint
    from ptncn_dist.engines.local import LocalEngine
    from ptncn_dist.engines.factory import engine_config
    from ptncn_dist.core.spec import init_params, layer_specs

    V, T, B = 11, 6, 4
    specs = layer_specs(V, [9, 7], sparse_input=True, output="softmax")

    def engine():
        params = [init_params(s, 3, 0.2, 0.2, np.float32) for s in specs]
        return LocalEngine(engine_config(OptimConfig("adam", 0.01), np.float32), specs, params)

    rng = np.random.default_rng(3)
    ids = [rng.integers(0, V, (T, B)) for _ in range(2)]
    mask = np.ones((T, B))
    a, b = engine(), engine()
    a.run_segment(ids[0], mask, 0, T, learn=True, t_prime=1)
    records = a.save_shards(str(tmp_path))
    for rec in records:
        shard = checkpoint.read_shard(str(tmp_path), rec)
        for name, sl in shard["slots"].items():
            assert set(sl) == {"m", "v", "t"}, name
            assert sl["t"] > 0 and sl["m"].dtype == np.float32, name
    b.load_shards(str(tmp_path), {"shards": records})
    for eng in (a, b):
        eng.run_segment(ids[1], mask, 0, T, learn=True, t_prime=1)
    for sa, sb in zip(a.layer_states(), b.layer_states()):
        for k in sa["params"]:
            np.testing.assert_array_equal(sa["params"][k], sb["params"][k], err_msg=k)
        for k in sa["slots"]:
            for n in ("m", "v"):
                np.testing.assert_array_equal(sa["slots"][k][n], sb["slots"][k][n], err_msg=f"{k}.{n}")
            assert sa["slots"][k]["t"] == sb["slots"][k]["t"] > 0


def test_whole_array_path_as_on_cupy():
    """With an array module other than NumPy (CuPy) Adam runs on the whole array at once, in
    plain array operations; driven here by a stand-in module over NumPy arrays."""
    import types
    fake_xp = types.SimpleNamespace(**{k: getattr(np, k) for k in ("empty", "multiply", "sqrt", "divide")})
    rng = np.random.default_rng(4)
    cfg = OptimConfig("adam", 0.01)
    p = rng.standard_normal((300, 40))
    ref = RefAdam(p, cfg.lr)
    slots = optim.init_slots(cfg, p, np)
    for i in range(6):
        a, b = rng.standard_normal((3, 300)), rng.standard_normal((3, 40))
        optim.apply_outer(cfg, p, a, b, 0.5, slots, fake_xp)
        ref.step(0.5 * a.T @ b)
        rows, g_rows = np.array([7, 250, 3]), rng.standard_normal((3, 40))
        optim.apply_rows(cfg, p, rows, g_rows, slots, fake_xp)
        g = np.zeros_like(p)
        g[rows] = g_rows
        ref.step(g)
    assert slots["_g"].shape == p.shape
    check(ref, p, slots, np.float64)


def test_blas_fallbacks_write_in_place():
    """axpby and gemm_tn with beta = 0 where BLAS does not apply (mixed layouts): the plain
    array operations, and beta = 0 overwrites (a NaN already there does not survive)."""
    from ptncn_dist.core.backend import axpby, gemm_tn
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 4)), np.asfortranarray(rng.standard_normal((6, 4)))
    want = 0.3 * x + 0.7 * y
    axpby(0.3, x, 0.7, y)
    np.testing.assert_allclose(y, want, rtol=1e-15)
    a, b = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    c = np.full((4, 6), np.nan).T
    gemm_tn(2.0, a, b, 0.0, c)
    np.testing.assert_allclose(c, 2.0 * a.T @ b, rtol=1e-14)


@pytest.mark.gpu
def test_adam_on_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    if not cupy.is_available():
        pytest.skip("CuPy sees no CUDA GPU")
    from ptncn_dist.engines.local import LocalEngine
    from ptncn_dist.engines.factory import engine_config
    from ptncn_dist.core.spec import init_params, layer_specs
    rng = np.random.default_rng(6)
    for sparse, x in ((True, rng.integers(0, 30, (8, 6))), (False, rng.random((8, 6, 30)))):
        specs = layer_specs(30, [32, 16], sparse_input=sparse, output="softmax" if sparse else "sigmoid")
        params = [init_params(s, 1, 0.2, 0.2, np.float64) for s in specs]
        engines = [LocalEngine(engine_config(OptimConfig("adam", 0.01), device=d), specs, params) for d in ("cpu", "gpu")]
        for e in engines:
            e.run_segment(x, np.ones((8, 6)), 0, 8, learn=True, t_prime=1)
        a, b = engines[0].weights(), engines[1].weights()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_fold_scale_leaves_the_true_velocity(name):
    """fold_scale makes v the true velocity (exactly the product v * v_scale) with scale 1, and
    the next updates stay on the plain rule; adam's and sgd's slots are left alone."""
    rng = np.random.default_rng(6)
    cfg = OptimConfig(name, 0.05, 0.9)
    p = rng.standard_normal((7, 5))
    slots = optim.init_slots(cfg, p, np)
    for _ in range(3):
        optim.apply_outer(cfg, p, rng.standard_normal((2, 7)), rng.standard_normal((2, 5)), 0.4, slots, np)
    before = {k: v.copy() if hasattr(v, "copy") else v for k, v in slots.items()}
    optim.fold_scale(slots)
    if name in ("momentum", "nag"):
        assert before["v_scale"] != 1.0 and slots["v_scale"] == 1.0
        np.testing.assert_array_equal(slots["v"], before["v"] * before["v_scale"])
        unfolded = dict(before, v=before["v"].copy())
        q = p.copy()
        a, b = rng.standard_normal((2, 7)), rng.standard_normal((2, 5))
        optim.apply_outer(cfg, p, a, b, 0.4, slots, np)
        optim.apply_outer(cfg, q, a, b, 0.4, unfolded, np)
        np.testing.assert_allclose(p, q, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(optim.velocity(slots), optim.velocity(unfolded), rtol=1e-14, atol=1e-15)
    else:
        assert set(slots) == set(before)
        for k, v in before.items():
            np.testing.assert_array_equal(slots[k], v, err_msg=k)
    assert tuple(k for k in slots if not k.startswith("_") and k != "v_scale") == optim.slot_names(cfg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outer_norm_from_grams_equals_the_formed_product(dtype):
    """The clip norm of a.T @ b from the Gram matrices (with and without a shared Gram matrix of
    b) equals the norm of the formed product."""
    from ptncn_dist.core.backend import gram, outer_norm
    rng = np.random.default_rng(2)
    for B, m, n in ((4, 8, 16), (3, 1, 1), (64, 300, 200)):
        a, b = (rng.standard_normal((B, k)).astype(dtype) for k in (m, n))
        want = np.linalg.norm(a.astype(np.float64).T @ b.astype(np.float64))
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert outer_norm(np, a, b) == pytest.approx(want, rel=tol)
        assert outer_norm(np, a, b, gram(b)) == pytest.approx(want, rel=tol)
