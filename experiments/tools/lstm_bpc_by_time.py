"""Test BPC of the PyTorch LSTM baseline on PTB characters after fixed amounts of training time.

    python -m experiments.tools.lstm_bpc_by_time --marks 60,540 [--layout streams|sentences] [--data ../shared/data/ptb_word] [--threads 2]
    python -m experiments.tools.lstm_bpc_by_time --chars 1220000,11000000

One 512-unit layer, 64-dim embedding, windows of 100 (truncated BPTT), Adam 2e-3, 32 columns.
`--layout streams` (the default, the usual language-model set-up): the training split joined
into 32 contiguous streams (`_` between sentences), (h, c) carried from window to window, and the
whole test split read the same way in 10 streams. `--layout sentences`: batches of 32 whole
sentences, each from a zero state, the stream every method of the comparison reads, tested on
the test split's sentences. Training time excludes the evaluations; each mark prints one JSON
line: seconds trained, windows or batches, characters seen and test BPC. `--chars` tests after
numbers of training characters instead, to compare with figures from a faster machine at the
same amount of text. Needs the torch extra.

    python -m experiments.tools.lstm_bpc_by_time --speed

times one training window (100 steps x 32 streams) side by side: a plain PyTorch loop (nn.LSTM,
nn.Embedding, nn.Linear, torch.optim.Adam) against the project's LSTM learner at the same sizes,
so a slow figure above can be told apart from a slow learner.
"""
from __future__ import annotations

import argparse
import json
import time


from ptncn_dist import metrics
from ptncn_dist.config import load
from ptncn_dist.data import open_streams
from ptncn_dist.data.contiguous import ContiguousStream
from ptncn_dist.data.ptb import WORD_SEP
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.diagnostics.evaluation import evaluate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--marks", default="60,540", help="training seconds at which to test, comma-separated")
    p.add_argument("--chars", help="test after these numbers of training characters instead, comma-separated "
                                   "(the same amount of text on any machine)")
    p.add_argument("--data", default="../shared/data/ptb_word")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layout", choices=("streams", "sentences"), default="streams")
    p.add_argument("--speed", action="store_true", help="time one window: plain PyTorch against the learner")
    args = p.parse_args(argv)
    cfg = load(None, ['model.type="lstm"', 'data.source="ptb_char"', 'data.format="char_from_words"',
                      f"data.path={json.dumps(args.data)}", "data.batch=32", "data.eval_batch=50",
                      "data.max_len=0", "baseline.hidden=512", "baseline.embed=64", "baseline.truncation=100",
                      'optim.name="adam"', "optim.lr=0.002", 'model.output="softmax"',
                      f"model.t_prime={0 if args.layout == 'streams' else 1}", f"engine.blas_threads={args.threads}"])
    streams = open_streams(cfg.data, cfg.train.seed)
    engine = build_engine(cfg, streams.train.dim, "tokens")
    if args.speed:
        print(json.dumps(speed(engine.model, streams.train.dim, args.threads)), flush=True)
        return engine.close()
    if args.layout == "streams":
        sep = streams.train.vocab.index(WORD_SEP)
        train = ContiguousStream(streams.train.sentences, streams.train.vocab, 32, 100, sep, "ptb.train")
        test = ContiguousStream(streams.test.sentences, streams.test.vocab, 10, 100, sep, "ptb.test")
    trained, pos, chars = 0.0, 0, 0
    marks = args.chars or args.marks
    for mark in (float(m) for m in marks.split(",")):
        while (chars if args.chars else trained) < mark:
            t0 = time.perf_counter()
            if args.layout == "streams":
                b = train.batch(pos)
                engine.model.run_stream(b.x, b.mask, learn=True, fresh=train.starts_pass(pos))
            else:
                b = streams.train.batch(pos)
                engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=1)
            trained += time.perf_counter() - t0
            chars, pos = chars + int(b.mask.sum()), pos + 1
        bpc = stream_bpc(engine.model, test) if args.layout == "streams" else \
            evaluate(engine, streams.test, 10**6, 1)["test_bpc"]
        print(json.dumps({"layout": args.layout, "train_s": round(trained, 1), "steps": pos, "chars": chars,
                          "test_bpc": round(bpc, 4), "threads": args.threads}), flush=True)
    engine.close()


def speed(model, vocab: int, threads: int, windows: int = 20) -> dict:
    """Seconds per 100 x 32 training window: plain PyTorch, then the learner (after a warm-up each)."""
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    x = np.random.default_rng(0).integers(0, vocab, (100, 32)).astype(np.int32)
    lstm, emb, out = torch.nn.LSTM(64, 512), torch.nn.Embedding(vocab, 64), torch.nn.Linear(512, vocab)
    opt = torch.optim.Adam([*lstm.parameters(), *emb.parameters(), *out.parameters()], lr=2e-3)
    xt, state = torch.from_numpy(x.astype(np.int64)), None

    def plain():
        nonlocal state
        y, state = lstm(emb(xt[:-1]), state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(out(y).reshape(-1, vocab), xt[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def ours():
        model.run_stream(x, np.ones(x.shape, np.float32), learn=True)

    res = {}
    for name, fn in (("plain_torch_s", plain), ("learner_s", ours)):
        fn()
        t0 = time.perf_counter()
        for _ in range(windows):
            fn()
        res[name] = round((time.perf_counter() - t0) / windows, 4)
    res["chars_per_s_learner"] = round(3200 / res["learner_s"])
    return {**res, "ratio": round(res["learner_s"] / res["plain_torch_s"], 3), "threads": threads}


def stream_bpc(model, test: ContiguousStream) -> float:
    """Bits per character over every window of the test columns, weights frozen; the carried
    training state is put aside and the test columns start from zero."""
    saved, sums = model.carried, {}
    for p in range(test.windows_per_pass):
        b = test.batch(p)
        metrics.add_sums(sums, model.run_stream(b.x, b.mask, learn=False, fresh=p == 0))
    model.carried = saved
    return metrics.summarize(sums)["bpc"]


if __name__ == "__main__":
    main()
