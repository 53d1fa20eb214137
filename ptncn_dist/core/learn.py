"""The local LRA updates of MODEL.md step 5, each an outer product of two (B, d) signals the
layer already holds, clipped to `update_radius`, divided by B, handed to the optimizer; then the
optional per-row max-norm `row_norm_bound` (the authors' `param_radius`) on the weights that
moved. The delta norms come from the small Gram matrices and the clip and 1/B factors travel as
a scale into `optim.apply_outer`, so nothing weight-sized is formed or allocated."""
from __future__ import annotations

import math

from . import optim
from .backend import gram, outer_norm
from .spec import LayerSpec, stacked_blocks


def clip_factor(norm: float, radius: float) -> float:
    """The factor that brings an array of Frobenius norm `norm` down to `radius` (1 if shorter)."""
    return radius / norm if radius > 0 and norm > radius else 1.0


def learn_generative(spec: LayerSpec, xp, p, slots, opt_cfg, z, err_below) -> None:
    """The updates of W and E: dW = clip(z.T @ err_below), dE = clip(gamma * dW.T), each / B.

    `err_below` is e0 for layer 1 (the forecast error) and eps[l-1] (from the layer below)
    otherwise; `z` is the layer's uncorrected state of the step.
    """
    inv_b = 1.0 / z.shape[0]
    r = spec.update_radius
    nW = outer_norm(xp, z, err_below) if r > 0 else 0.0
    cW = clip_factor(nW, r)
    cE = clip_factor(abs(spec.gamma) * cW * nW, r)
    optim.apply_outer(opt_cfg, p["W"], z, err_below, cW * inv_b, slots["W"], xp)
    optim.apply_outer(opt_cfg, p["E"], err_below, z, spec.gamma * cW * cE * inv_b, slots["E"], xp)
    if spec.row_norm_bound > 0:
        for name in ("W", "E"):
            bound_rows(xp, p[name], spec.row_norm_bound)


def learn_recurrent(spec: LayerSpec, xp, p, slots, stack, stack_slots, opt_cfg, inp, rows, eps) -> None:
    """The updates of M, V, U: clip(in.T @ eps), clip(yprev.T @ eps), clip(yprev_up.T @ eps), / B.

    `rows` are the step's `stacked_rows` (scaled here in place when they are a copy). Each
    block of the stack is clipped on its own (its factor scales its columns of `rows`), then
    one GEMM lands all of them; a token-id input updates M by rows. The row bound of the stack
    is the row bound of each of its blocks.
    """
    inv_b = 1.0 / eps.shape[0]
    r = spec.update_radius
    if spec.sparse_input:
        _sparse_update(xp, p, slots, opt_cfg, inp, eps, r, inv_b)
    if r > 0:
        gram_eps = gram(eps)
        blocks = [b for _, b in stacked_blocks(spec)]
        scales = [clip_factor(outer_norm(xp, rows[:, b], eps, gram_eps), r) for b in blocks]
        if any(c != 1.0 for c in scales):
            if len(blocks) == 1:
                rows = rows * scales[0]
            else:
                for b, c in zip(blocks, scales):
                    if c != 1.0:
                        rows[:, b] *= c
    optim.apply_outer(opt_cfg, stack, rows, eps, inv_b, stack_slots, xp)
    if spec.row_norm_bound > 0:
        bound_rows(xp, stack, spec.row_norm_bound)
        if spec.sparse_input:
            bound_rows(xp, p["M"], spec.row_norm_bound)


def _sparse_update(xp, p, slots, opt_cfg, ids, eps, radius, inv_b):
    """dM = onehot(ids).T @ eps without the one-hot: summed rows of eps per distinct token."""
    valid = ids >= 0
    if not bool(valid.any()):
        optim.apply_rows(opt_cfg, p["M"], ids[:0], eps[:0], slots["M"], xp)
        return
    rows, inverse = xp.unique(ids[valid], return_inverse=True)
    pick = (inverse[:, None] == xp.arange(rows.shape[0])[None, :]).astype(eps.dtype)
    g_rows = pick.T @ eps[valid]
    norm = math.sqrt(float(xp.vdot(g_rows.ravel(), g_rows.ravel())))
    g_rows *= clip_factor(norm, radius) * inv_b
    optim.apply_rows(opt_cfg, p["M"], rows, g_rows, slots["M"], xp)


def bound_rows(xp, w, bound: float) -> None:
    """Scale down, in place, every row of `w` whose Euclidean norm exceeds `bound` (as the
    authors' clip_by_norm(w, param_radius, axes=[1]))."""
    norms = xp.sqrt((w * w).sum(axis=1, keepdims=True))
    w *= xp.minimum(1.0, bound / xp.maximum(norms, 1e-30))
