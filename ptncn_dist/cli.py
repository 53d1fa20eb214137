"""The `ptncn` command: train | eval | export | predict | bench | chaos | tune."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import DataError, PtncnError, RunStopped


def _add_config_args(p):
    p.add_argument("--config", help="a TOML file (experiments/configs/*.toml); default: the offline Bouncing MNIST run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set model.hidden=[512,512]")
    p.add_argument("--engine", choices=["local", "ray"], help="engine.name: local (one process) or ray (one actor per layer)")
    p.add_argument("--steps", type=int, help="train.steps: time steps to train")
    p.add_argument("--address", help="engine.address for --engine ray: 'auto', HOST:PORT, or empty to start a local Ray")


def _config(args):
    from .config import load
    overrides = list(args.overrides)
    if getattr(args, "engine", None):
        overrides.append(f'engine.name="{args.engine}"')
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "address", None) is not None:
        overrides.append(f'engine.address="{args.address}"')
    return load(args.config, overrides)


def cmd_train(args) -> int:
    """Train into --run-dir (default runs/<time>): a directory that holds this run continues it,
    one that holds another run is refused. --resume RUN_DIR continues the run there with its own
    config.toml (overrides may change logging and length, not the numbers)."""
    from .config import load
    from .trainer import train
    if args.resume:
        run_dir = args.resume
        path = os.path.join(run_dir, "config.toml")
        if not os.path.exists(path):
            raise PtncnError(f"--resume {run_dir}: no config.toml there (not a run directory)")
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"train.steps={args.steps}")
        cfg = load(path, overrides)
        train(cfg, run_dir, resume=True)
        return 0
    cfg = _config(args)
    from .checkpoint import rundir
    # no --run-dir: a directory of its own, even beside a run started in the same second
    run_dir = args.run_dir or rundir.new_default_dir()
    print(f"run directory: {run_dir}")
    try:
        train(cfg, run_dir, resume=None)
    finally:
        if not args.run_dir:
            rundir.remove_if_empty(run_dir)
    return 0


def cmd_eval(args) -> int:
    from .diagnostics.evaluation import reference_losses
    from .run import load_run
    run = load_run(args.run_dir, allow_older=args.allow_older)
    n = args.batches or run.config.train.eval_batches
    res = run.evaluate(batches=n)
    _, ref = reference_losses(run.streams, n, run.config.model.t_prime)
    out = {"checkpoint": run.checkpoint, "step": run.step, **res, "reference": ref}
    if args.context:
        from .diagnostics.context_probe import probe
        try:
            ks = [int(k) for k in args.context.split(",")]
            out["context_probe"] = probe(run.engine, run.streams.test, ks, n)
        except ValueError as exc:
            raise PtncnError(f"--context {args.context}: {exc}") from None
    print(json.dumps(out, indent=2))
    return 0


def cmd_export(args) -> int:
    import numpy as np
    from .run import load_run
    run = load_run(args.run_dir, allow_older=args.allow_older)
    weights = run.weights()
    np.savez(args.npz, **weights)
    print(f"wrote {len(weights)} arrays ({', '.join(sorted(weights))}) from {run.checkpoint} to {args.npz}")
    return 0


def cmd_predict(args) -> int:
    """Forecasts of a trained run: arrays in (.npy), arrays out; or text in, text out."""
    import numpy as np
    from .data.arrays import load_npy
    from .run import decode, encode_text, generate, load_run, next_symbols
    run = load_run(args.run_dir, allow_older=args.allow_older)
    if args.text is not None or (args.input and not args.input.endswith(".npy")):
        if args.text is not None:
            text = args.text
        else:
            try:
                with open(args.input, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise PtncnError(f"{args.input}: cannot read as UTF-8 text ({exc})") from None
        ids = encode_text(run, text)
        if args.generate:
            result = decode(run, generate(run, ids, args.generate, args.seed, args.temperature))
        else:
            result = decode(run, next_symbols(run, ids).argmax(axis=1))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(result + "\n")
        print(result)
        return 0
    if not args.input:
        raise PtncnError("ptncn predict needs --input FILE.npy (or --text / a .txt input for a text run)")
    x = np.asarray(load_npy(args.input))
    mask = np.asarray(load_npy(args.mask)) if args.mask else None
    try:
        out = run.forecast(x, mask)
    except DataError as exc:
        raise DataError(f"{args.input}: {exc}") from None
    if not args.out:
        raise PtncnError("ptncn predict --input x.npy needs --out forecasts.npy")
    np.save(args.out, out)
    print(f"wrote forecasts of shape {out.shape} from {run.checkpoint} (step {run.step}) to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptncn", description="P-TNCN across a Ray cluster, one actor per layer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model")
    _add_config_args(p)
    p.add_argument("--run-dir", help="where config, metrics.jsonl, checkpoints and plots go (default runs/<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last good checkpoint")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a saved run on its test data")
    p.add_argument("run_dir")
    p.add_argument("--batches", type=int, help="number of test batches (default: train.eval_batches)")
    p.add_argument("--context", metavar="K1,K2,...",
                   help="also run the context-length probe: the loss when each forecast sees only its last K frames")
    p.add_argument("--allow-older", action="store_true",
                   help="if the newest checkpoint is damaged, use the newest older one that verifies (default: stop)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="write a run's final weights as .npz (M1, V1, U1, W1, E1, M2, ...)")
    p.add_argument("run_dir")
    p.add_argument("--npz", required=True)
    p.add_argument("--allow-older", action="store_true",
                   help="if the newest checkpoint is damaged, use the newest older one that verifies (default: stop)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("predict", help="one-step-ahead forecasts of a trained run, or text it generates")
    p.add_argument("run_dir")
    p.add_argument("--input", help="a .npy of (B, T, D) values or (B, T) token ids; for a text run, a text file")
    p.add_argument("--mask", help="a .npy (B, T) mask of the input (0: padding)")
    p.add_argument("--text", help="for a text run: the text to continue or forecast")
    p.add_argument("--out", help="where the forecasts go (.npy), or the text (a text run; also printed)")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="a text run: sample N symbols after the text instead of the most likely next symbol at each position")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed for --generate")
    p.add_argument("--temperature", type=float, default=1.0, help="the sampling temperature for --generate")
    p.add_argument("--allow-older", action="store_true",
                   help="if the newest checkpoint is damaged, use the newest older one that verifies (default: stop)")
    p.set_defaults(func=cmd_predict)
    sub.add_parser("bench", help="measure engines side by side (ptncn bench --help)")
    sub.add_parser("chaos", help="fault-injection drill (ptncn chaos --help)")
    sub.add_parser("tune", help="a hyper-parameter study as Ray Tune trials with ASHA (ptncn tune --help)")
    return parser


# commands that live in their own modules, each with its own argument parser
STUDIES = {"bench": "ptncn_dist.studies.bench", "chaos": "ptncn_dist.studies.chaos", "tune": "ptncn_dist.tune"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STUDIES:
        from importlib import import_module
        try:
            return import_module(STUDIES[argv[0]]).main(argv[1:])
        except PtncnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    import warnings
    from .checkpoint import CheckpointWarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)  # the command prints its own warning line
            # numpy's overflow warnings from the layer math: the divergence guard's one line says
            # where a NaN or Inf appeared, and a finite overflow (a saturated exp) is harmless
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"ptncn_dist\.")
            return args.func(args)
    except RunStopped as exc:
        print(exc, file=sys.stderr)
        return 130
    except PtncnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
