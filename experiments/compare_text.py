"""compare.py's words around the numbers: each experiment's title, the setup every table needs
(what ran, at what size, how it was measured) and how to read the results."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compare import Scale

PILOT_SEED = 100
TUNING_NOTE = (
    "P-TNCN uses the authors' optimizer (Nesterov momentum 0.95, lr 0.075); in a pilot, lr 0.01 and 0.03 were "
    "no better for tanh units, while 0.03 was better for sign units on PTB characters (0.075 is kept for both). "
    f"Each baseline's optimizer was picked in a pilot sweep on seed {PILOT_SEED} (not a reported seed) over Adam "
    "lr 1e-3, 3e-3, 1e-2 and SGD lr 0.1, all with global-norm clipping at 5, on Bouncing MNIST and PTB "
    "characters (BPTT and RTRL also on PTB words), and one setting per method is used everywhere: BPTT Adam "
    "1e-2, TBPTT Adam 1e-3, RTRL Adam 1e-2, UORO Adam 1e-3. The ESN is untuned (spectral radius 0.9, "
    "density 0.1, input scale 1, ridge 1e-4).")


# -- parameter matching (pure) ---------------------------------------------------------------------


TITLES = {"bouncing": "Bouncing MNIST and NotMNIST: next-frame prediction",
          "ptb": "Penn Treebank: next-character and next-word prediction",
          "zeroshot": "Zero-shot transfer: trained on Bouncing MNIST, tested on Bouncing NotMNIST",
          "continual": "Continual learning: Bouncing MNIST, then NotMNIST, then MNIST again"}


def setup_text(experiment: str, scale: Scale, seeds: list, threads: int) -> str:
    """What was run, in words (the caveats every table needs)."""
    s = scale
    lines = [f"Scale `{s.name}`; seeds {seeds}; mean ± sample std over seeds (one seed: no ±). "
             f"P-TNCN widths {list(s.text_ptncn_hidden if experiment == 'ptb' else s.ptncn_hidden)}; BPTT, TBPTT "
             f"and UORO use the Elman hidden size whose parameter count (Wx, Wh, b, Wo, bo) is closest to P-TNCN's "
             f"(M, V, U, W, E of every layer); the ESN's reservoir size matches its trained readout to the same "
             f"count (the fixed reservoir is not counted; capped at {s.esn_max_hidden} units); RTRL is O(H^4) per "
             f"step and runs at a tiny width, not matched."]
    if experiment == "ptb":
        lines.append(f"Text: sentences in batches of {s.text_batch}, {s.char_steps:,} training steps on characters "
                     f"or {s.word_steps:,} on words per run (a step is one symbol position of a batch, padding "
                     f"included; baselines finish their last sentence, so they may take a few more); tested on the "
                     f"first {s.text_eval_batches} batches of the test split. Characters are derived from the word "
                     f"files (`char_from_words`).")
    else:
        steps = s.continual_steps if experiment == "continual" else s.video_steps
        videos = steps // s.seq_len * s.batch
        lines.append(f"Video: {s.frame}x{s.frame} frames with {s.sprites} sprites, {s.seq_len}-frame videos in "
                     f"batches of {s.batch}; {steps:,} training steps ({videos:,} videos)"
                     + (" per phase" if experiment == "continual" else "")
                     + f"; tested on {s.eval_batches} batches of unseen videos (the same videos for every method "
                       f"at a seed).")
    lines.append("Losses are summed over a frame's pixels (BCE, SE) and averaged over frames t >= 1; "
                 "P-TNCN's test forecasts run its state correction with frozen weights (its inference), the "
                 "baselines run forward with frozen weights. Baselines update once per sequence (BPTT, ESN), "
                 "per window (TBPTT) or per step (RTRL, UORO); P-TNCN updates every step.")
    lines.append(TUNING_NOTE)
    where = "" if experiment in ("bouncing", "ptb") else " (in results.csv)"
    lines.append(f"Each (method, seed) ran alone in its own process with BLAS pinned to {threads} thread(s). "
                 f"Cost measures{where}: 'Train s' is the training loop only, 'Wall s' the whole process "
                 "(imports, data, evaluation). "
                 "'Peak RSS' is the process's peak resident set from os.wait4 (interpreter, NumPy, the data "
                 "and the model together, so at small sizes it mostly measures the data). 'Seq. memory' is "
                 "the tracemalloc peak of learning one more training sequence after all timed work: the "
                 "learning algorithm's own working memory beyond its weights. The machine was shared with "
                 "other work, so timings are indicative.")
    return "\n".join(f"- {x}" for x in lines)


def interpretation_bouncing(scale: Scale) -> str:
    return ("The scored quantity is the forecast of the next frame. A forecaster that ignores motion and "
            "always outputs the mean training frame is the bar to clear: below it, a model has learned something "
            "about where the sprites are going; near it, it has mostly learned the average ink. At the `small` "
            "scale training is very short and the frames are tiny (a 28-pixel sprite in a 32-pixel frame can "
            "move only 4 pixels), so these numbers compare learners early in training on an easy geometry; "
            "they say nothing about the paper's 64x64, long-training regime, which the `full` scale targets. "
            "NotMNIST sprites come from the only notMNIST file at hand (a 10,000-image sample), split 9,000 "
            "train / 1,000 test; MNIST uses its own 60,000 / 10,000 split.")


def interpretation_ptb(scale: Scale) -> str:
    return ("Bits per character and perplexity over the first test batches. The unigram line is the "
            "frequency of each symbol over the whole training split (far more text than any model here "
            "saw); beating it means a model uses context. At the "
            "`small` scale every model sees a small fraction of one epoch (see the line under each table), so "
            "perplexities are far from the paper's; BPTT updates once "
            "per batch of sentences and so makes far fewer updates than the step-wise learners for the same "
            "text. The ESN's least-squares readout is mapped to probabilities with a softmax of its linear "
            "outputs (ptncn_dist/baselines/esn.py), which is close to uniform over 10,000 words: its word-level "
            "perplexity reflects that mapping more than its reservoir.")


def interpretation_zeroshot(scale: Scale) -> str:
    return ("'Zero-shot' means weights trained on MNIST videos and frozen, then scored on NotMNIST videos. "
            "For P-TNCN the state correction still runs at test time (that is the paper's claim of adaptation "
            "without weight updates); the rows 'correction off' score the same weights with beta = 0, so the "
            "difference isolates the correction. The gap column is zero-shot minus trained-on-NotMNIST at the "
            "same seed: small means the frozen model transfers. NotMNIST letters carry about three times the "
            "ink of MNIST digits, so absolute losses on NotMNIST are larger for every method. BCE punishes a "
            "confident wrong pixel hard (predictions are clipped at 1e-7, about 16 nats per such pixel), which is "
            "why copying the previous frame scores badly in BCE yet well in SE; read the two tables together.")


def interpretation_continual(scale: Scale) -> str:
    return ("Each model trains on MNIST videos, then on NotMNIST videos, then on MNIST again, with no replay "
            "and no task signal, and is scored on both test sets after every phase. 'MNIST forgetting' is MNIST "
            "BCE after the NotMNIST phase minus after the first MNIST phase (positive: it forgot); 'NotMNIST "
            "forgetting' is the same for NotMNIST across the last phase. The ESN accumulates ridge-regression "
            "statistics over all phases, so it averages rather than forgets by construction.")


INTERPRETATION = {"bouncing": interpretation_bouncing, "ptb": interpretation_ptb,
                  "zeroshot": interpretation_zeroshot, "continual": interpretation_continual}
