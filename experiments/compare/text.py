"""The comparison's words around the numbers: the Markdown templates in experiments/compare/templates/
(string.Template, `$name` placeholders), filled with numbers only. `<experiment>.md` holds each
experiment's title (its first line) and how to read its results; setup.md, data_*.md, page.md
and failed.md are shared."""
from __future__ import annotations

from pathlib import Path
from string import Template

from .scales import Scale

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fill(name: str, **values) -> str:
    """templates/<name>.md with every placeholder filled (KeyError names a missing one)."""
    return Template((TEMPLATES / f"{name}.md").read_text(encoding="utf-8")).substitute(**values).strip()


def title_and_reading(experiment: str) -> tuple[str, str]:
    """(title, how to read the results) from templates/<experiment>.md."""
    head, _, body = (TEMPLATES / f"{experiment}.md").read_text(encoding="utf-8").partition("\n")
    return head.lstrip("# ").strip(), body.strip()


def setup_text(experiment: str, scale: Scale, seeds: list, threads: int, parallel: int, cores,
               settings_from: str = "") -> str:
    """What was run, in words (the caveats every table needs); `settings_from`: the directory
    whose tuning chose the settings (--settings-from)."""
    s = scale
    if experiment == "ptb":
        budget = {"minutes": f"{s.text_minutes:g}"} if s.text_minutes else {}
        name = "data_text_timed" if budget else "data_text_epoch" if s.text_bucket else "data_text"
        data = fill(name, batch=s.text_batch, char_steps=f"{s.char_steps:,}",
                    word_steps=f"{s.word_steps:,}", eval_batches=s.text_eval_batches, **budget)
    else:
        steps = s.continual_steps if experiment == "continual" else s.video_steps
        data = fill("data_video", frame=s.frame, sprites=s.sprites, seq_len=s.seq_len, batch=s.batch,
                    steps=f"{steps:,}", videos=f"{steps // s.seq_len * s.batch:,}",
                    per_phase=" per phase" if experiment == "continual" else "", eval_batches=s.eval_batches)
    widths = list(s.text_ptncn_hidden if experiment == "ptb" else s.ptncn_hidden)
    tuning = (fill("tuning_from", source=settings_from) if settings_from else
              fill("tuning", tune_trials=s.tune_trials, tune_share=f"{100 * s.tune_fraction:g}")
              if s.tune_trials else fill("tuning_none"))
    return fill("setup", scale=s.name, seeds=seeds, widths=widths, esn_cap=s.esn_max_hidden, data=data,
                tuning=tuning, threads=threads, parallel=parallel, cores=cores)


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
