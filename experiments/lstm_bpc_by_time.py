"""Test BPC of the PyTorch LSTM baseline on PTB characters after fixed amounts of training time.

    python experiments/lstm_bpc_by_time.py --marks 60,540 [--data ../shared/data/ptb_word] [--threads 2]

One 512-unit layer, 64-dim embedding, windows of 100 (truncated BPTT), Adam 2e-3, batches of 32
sentences, the same sentence batches and test split as every method of the comparison. Training
time excludes the evaluations; each mark prints one JSON line: seconds trained, batches,
characters seen and test BPC over the whole test split. Needs the torch extra.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptncn_dist.config import load  # noqa: E402
from ptncn_dist.data import open_streams  # noqa: E402
from ptncn_dist.engines.factory import build_engine  # noqa: E402
from ptncn_dist.train import evaluate  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--marks", default="60,540", help="training seconds at which to test, comma-separated")
    p.add_argument("--data", default="../shared/data/ptb_word")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    cfg = load(None, ['model.type="lstm"', 'data.source="ptb_char"', 'data.format="char_from_words"',
                      f"data.path={json.dumps(args.data)}", "data.batch=32", "data.eval_batch=50",
                      "data.max_len=0", "baseline.hidden=512", "baseline.embed=64", "baseline.truncation=100",
                      'optim.name="adam"', "optim.lr=0.002", "model.t_prime=1", 'model.output="softmax"',
                      f"engine.blas_threads={args.threads}"])
    streams = open_streams(cfg.data, cfg.train.seed)
    engine = build_engine(cfg, streams.train.dim, "tokens")
    trained, pos, chars = 0.0, 0, 0
    for mark in (float(m) for m in args.marks.split(",")):
        while trained < mark:
            t0 = time.perf_counter()
            b = streams.train.batch(pos)
            engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=1)
            trained += time.perf_counter() - t0
            chars, pos = chars + int(b.mask.sum()), pos + 1
        ev = evaluate(engine, streams.test, 10**6, 1)
        print(json.dumps({"train_s": round(trained, 1), "batches": pos, "chars": chars,
                          "test_bpc": round(ev["test_bpc"], 4), "threads": args.threads}), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
