"""The pure functions of a step's first two phases (MODEL.md steps 1-4): the state h, z of a
layer from step t-1's carried values, the predictions, the errors, and the state correction.

State correction with K = `inference_steps` iterations (K = 1 is MODEL.md exactly): start from
v0 = h, s0 = z; for k = 1..K form the errors from the current states s^(k-1) as MODEL.md forms
them from z (layer 1: e0 = (out(s1 @ W1) - x) * m; e[l] = (s[l+1] @ W[l+1] - s[l]) * m), then
d^k = e[l-1] @ E[l] - alpha * e[l] (+ lateral_l1 * sign(h)), v^k = v^(k-1) - beta * d^k,
s^k = phi(v^k). The corrected state is y = s^K and eps = (z - y) * m. The forecast xhat, the
loss and the update of W1 always use the k = 1 values, formed from step t-1's state only.

Inputs to layer 1 are either dense rows (B, x_dim) or token ids (B,) of integer dtype (-1: no
token). Ids stand for one-hot rows: `x @ M` is a row gather.
"""
from __future__ import annotations

from .activations import ACTIVATIONS, OUTPUTS, standardize
from .spec import LayerSpec


def is_ids(inp) -> bool:
    return inp.dtype.kind in "iu"


def input_matmul(xp, inp, M):
    """in @ M: a row gather when `inp` holds token ids (-1 gives a zero row)."""
    if not is_ids(inp):
        return inp @ M
    valid = inp >= 0
    out = M[xp.where(valid, inp, 0)]
    if not bool(valid.all()):
        out *= valid[:, None].astype(M.dtype)
    return out


def stacked_rows(spec: LayerSpec, xp, inp, yprev, yprev_up):
    """The carried rows the stack multiplies, side by side: (B, rows of the stack)."""
    parts = ([] if spec.sparse_input else [inp]) + [yprev] + ([yprev_up] if spec.has_U else [])
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)


def forward(spec: LayerSpec, xp, p, stack, rows, inp):
    """Phase 1: h = in @ M + yprev @ V (+ yprev_up @ U) and z = phi(h), from step t-1's
    carried values only: `rows` are they side by side (`stacked_rows`), `stack` the
    `stacked_names` weights as row blocks; a token-id `inp` adds its rows of M. With
    `spec.standardize` h is standardized before phi, and stays so for the correction.

    The stack is column-major, and h is formed as (stack.T @ rows.T).T: with the weight as
    the left operand of a long inner dimension BLAS runs 5-15% faster here than rows @ stack."""
    h = xp.ascontiguousarray((stack.T @ rows.T).T)
    if spec.sparse_input:
        h += input_matmul(xp, inp, p["M"])
    if spec.standardize:
        h = standardize(xp, h)
    return h, ACTIVATIONS[spec.activation](xp, h)


def predict_below(p, s):
    """The layer's prediction of the layer below (pre-output for layer 1): s @ W."""
    return s @ p["W"]


def output_error(spec: LayerSpec, xp, pred, x, m):
    """Layer 1: xhat = out(s1 @ W1) and e0 = (xhat - x) * m; `x` dense rows or token ids."""
    xhat = OUTPUTS[spec.output](xp, pred)
    e0 = xhat * m
    if is_ids(x):
        valid = x >= 0
        rows = xp.arange(x.shape[0])
        e0[rows, xp.where(valid, x, 0)] -= m[:, 0] * valid.astype(e0.dtype)
    else:
        e0 -= x * m
    return xhat, e0


def state_error(pred_above, s, m):
    """e[l] = (s[l+1] @ W[l+1] - s[l]) * m, formed by both layers l and l+1."""
    return (pred_above - s) * m


def correction(spec: LayerSpec, xp, p, h, v, e_below, e_self):
    """One iteration of the state correction: d = e_below @ E - alpha * e_self (no alpha term
    for the top layer) + lateral_l1 * sign(h) (when on), v' = v - beta * d. Returns (v', phi(v'));
    with v = h it is MODEL.md's y = phi(h - beta * d)."""
    d = e_below @ p["E"]
    if not spec.is_top:
        d -= spec.alpha * e_self
    if spec.lateral_l1 > 0:
        d += spec.lateral_l1 * xp.sign(h)
    v = v - spec.beta * d
    return v, ACTIVATIONS[spec.activation](xp, v)


def temporal_error(z, y, m):
    """eps = (z - y) * m: how far the correction moved the layer's state."""
    return (z - y) * m
