"""The comparison's reference forecasts, fitted on a trial's first training set and scored on
every held-out set it names, by the project's one implementation
(ptncn_dist.diagnostics.references, the same numbers `ptncn train` reports): for frames the mean
training frame, the previous frame and the blur blend; for tokens add-one unigram, bigram and
trigram frequencies over the training split."""
from __future__ import annotations

import math

from ptncn_dist.data import open_streams
from ptncn_dist.diagnostics import references
from ptncn_dist.diagnostics.evaluation import evaluation_batches

from .jobs import config_for

NAMES = {"copy_previous": "copy_last"}  # the comparison's name for it since its first results
METRICS = {"frames": ("bce", "se"), "tokens": ("bpc", "ppl")}


def as_test_metrics(scores: dict, name: str, kind: str) -> dict:
    """One reference's scores in the form a model's evaluation has (test_bce, test_bce_by_t, ...);
    for tokens also test_nll (nats per token)."""
    out = {}
    for k in METRICS[kind]:
        if scores.get(f"{name}_{k}") is not None:
            out[f"test_{k}"] = scores[f"{name}_{k}"]
        if f"{name}_{k}_by_t" in scores:
            out[f"test_{k}_by_t"] = scores[f"{name}_{k}_by_t"]
    if kind == "tokens" and "test_bpc" in out:
        out["test_nll"] = out["test_bpc"] * math.log(2.0)
    return out


def run_reference(spec: dict) -> dict:
    """Reference forecasts fitted on the first phase's training data, scored on every eval set
    (the held-out batches a model of the same job is scored on)."""
    seed, nb = int(spec["seed"]), int(spec["eval_batches"])
    train_cfg = config_for(spec, spec["phases"][0]["data"])
    train = open_streams(train_cfg.data, seed).train
    fitted = references.fit(train)
    tp = train_cfg.model.t_prime
    names = references.FRAME_NAMES if fitted.kind == "frames" else tuple(references.TEXT_ORDERS)
    out: dict = {}
    for ds in spec["evals"]:
        test = open_streams(config_for(spec, ds).data, seed).test
        scores = references.score(fitted, evaluation_batches(test, nb), tp)
        for name in names:
            metrics = as_test_metrics(scores, name, fitted.kind)
            if metrics:
                out.setdefault(NAMES.get(name, name), {})[ds] = metrics
    return {"references": out}
