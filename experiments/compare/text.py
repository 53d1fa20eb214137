"""The comparison's words around the numbers: the Markdown templates in experiments/compare/templates/
(string.Template, `$name` placeholders), filled with numbers only. `<experiment>.md` holds each
experiment's title (its first line) and how to read its results; setup.md, data_*.md, page.md
and failed.md are shared."""
from __future__ import annotations

from pathlib import Path
from string import Template

from .scales import Scale

TEMPLATES = Path(__file__).resolve().parent / "templates"
# steps of one epoch of PTB's training split in unbucketed batches of 50 sentences (scales.py)
EPOCH_STEPS = {"characters": 225_525, "words": 41_648}
CLOCKS = {"process": "CPU seconds of the trial's own process, one core each, so that trials sharing a "
                     "machine get the same computation", "wall": "wall-clock seconds"}


def fill(name: str, **values) -> str:
    """templates/<name>.md with every placeholder filled (KeyError names a missing one)."""
    return Template((TEMPLATES / f"{name}.md").read_text(encoding="utf-8")).substitute(**values).strip()


def title_and_reading(experiment: str) -> tuple[str, str]:
    """(title, how to read the results) from templates/<experiment>.md."""
    head, _, body = (TEMPLATES / f"{experiment}.md").read_text(encoding="utf-8").partition("\n")
    return head.lstrip("# ").strip(), body.strip()


def text_caps(s: Scale) -> str:
    """The step caps of a timed text run in words: how many steps, and (unbucketed batches of
    50) what share of an epoch that is."""
    def cap(steps: int, unit: str) -> str:
        epoch = EPOCH_STEPS[unit] if s.text_batch == 50 and not s.text_bucket else 0
        if not epoch:
            return f"{steps:,} steps on {unit}"
        share = steps / epoch
        words = ("one epoch" if abs(share - 1) < 1e-3 else "a quarter epoch" if abs(share - 0.25) < 1e-3
                 else f"{share:,.1f} epochs")
        return f"{steps:,} steps on {unit} ({words})"
    return f"{cap(s.char_steps, 'characters')} or {cap(s.word_steps, 'words')}"


def seeds_text(experiment: str, scale: Scale, seeds: list) -> str:
    """The seeds the runs used: at a scale that runs fewer seeds off Bouncing MNIST (the long
    scale), which runs had which."""
    if experiment in ("continual", "ptb"):
        return str(scale.seeds_for(experiment, seeds))
    other = scale.seeds_for("other", seeds)
    if other == seeds:
        return str(seeds)
    return f"{seeds} for runs trained on Bouncing MNIST, {other} for runs trained on other data"


def setup_text(experiment: str, scale: Scale, seeds: list, threads: int, parallel: int, cores,
               settings_from: str = "") -> str:
    """What was run, in words (the caveats every table needs); `settings_from`: the directory
    whose tuning chose the settings (--settings-from)."""
    s = scale
    if experiment == "ptb":
        budget = {"minutes": f"{s.text_minutes:g}", "clock": CLOCKS[s.clock], "caps": text_caps(s)} if s.text_minutes else {}
        name = "data_text_timed" if budget else "data_text_epoch" if s.text_bucket else "data_text"
        data = fill(name, batch=s.text_batch, char_steps=f"{s.char_steps:,}",
                    word_steps=f"{s.word_steps:,}", eval_batches=s.text_eval_batches, **budget)
    else:
        steps = s.continual_steps if experiment == "continual" else s.video_steps
        video = dict(frame=s.frame, sprites=s.sprites, seq_len=s.seq_len, batch=s.batch, steps=f"{steps:,}",
                     per_phase=" per phase" if experiment == "continual" else "", eval_batches=s.eval_batches)
        data = (fill("data_video_timed", minutes=f"{s.video_minutes:g}", clock=CLOCKS[s.clock],
                     per="per phase" if experiment == "continual" else "per run", **video)
                if s.video_minutes else fill("data_video", videos=f"{steps // s.seq_len * s.batch:,}", **video))
    widths = list(s.text_ptncn_hidden if experiment == "ptb" else s.ptncn_hidden)
    timed = s.text_minutes if experiment == "ptb" else s.video_minutes
    tuning = (fill("tuning_from", source=settings_from) if settings_from else
              fill("tuning", tune_trials=s.tune_trials, tune_share=f"{100 * s.tune_fraction:g}",
                   budget="training time" if timed else "steps")
              if s.tune_trials else fill("tuning_none"))
    return fill("setup", scale=s.name, seeds=seeds_text(experiment, s, seeds), widths=widths,
                esn_cap=s.esn_max_hidden, data=data, tuning=tuning, threads=threads, parallel=parallel,
                cores=cores)


def page(experiment: str, **parts) -> str:
    """The whole results.md of one experiment."""
    title, reading = title_and_reading(experiment)
    return fill("page", title=title, reading=reading, **parts) + "\n"


def failed_text(failed: list, rerun: str, diverged: list = ()) -> str:
    """The sections on trials that diverged and trials that did not finish ('' when none)."""
    def items(pairs):
        return "\n".join(f"- `{jid}`: {status}" for jid, status in pairs)
    parts = ([fill("diverged", list=items(diverged))] if diverged else []) + (
        [fill("failed", rerun=rerun, list=items(failed))] if failed else [])
    return "".join(f"\n{part}\n" for part in parts)
