"""Train P-TNCN on a text file at character level, then generate from it.

    python examples/text_generate.py --text my_corpus.txt --steps 5000 --run-dir runs/text

Without --text a small built-in corpus is written to the run's data directory. The run reads
`data.source = "text"` (train.txt, and valid.txt / test.txt when present; else held out by the
split rule), lines as sequences.
"""
import argparse
import os
import shutil

from ptncn_dist import load_config, load_run, train
from ptncn_dist.run import decode, encode_text, generate

CORPUS = """the cat sat on the mat
the dog sat on the log
a cat and a dog sat on a mat
the bird sat on the branch
a bird and a cat sat in the sun
the sun is on the mat and the log
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", help="a UTF-8 text file, one sequence per line (default: a built-in corpus)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--run-dir", default="runs/text")
    p.add_argument("--prompt", default="the cat")
    args = p.parse_args(argv)
    data = f"{args.run_dir.rstrip('/')}-data"
    os.makedirs(data, exist_ok=True)
    if args.text:
        shutil.copyfile(args.text, os.path.join(data, "train.txt"))
    else:
        with open(os.path.join(data, "train.txt"), "w", encoding="utf-8") as fh:
            fh.write(CORPUS * 20)
    cfg = load_config(None, [f"train.steps={args.steps}", 'data.source="text"', 'data.format="char"',
                             f'data.path="{data}"', 'model.output="softmax"', "model.hidden=[128, 128]",
                             "data.batch=16", "train.progress=false", "train.plots=false"])
    train(cfg, args.run_dir)

    run = load_run(args.run_dir)
    ids = encode_text(run, args.prompt)
    print(args.prompt + "|" + decode(run, generate(run, ids, 40, seed=0)))


if __name__ == "__main__":
    main()
