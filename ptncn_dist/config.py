"""Run configuration: dataclasses for model / optim / data / train / engine, TOML in and out,
`--set section.key=value` overrides, and validation that lists the valid keys.

Every key is checked before any work starts: an unknown key, a wrong type or an impossible value
raises ConfigError naming the key and what it accepts.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field

from .baselines.config import BaselineSection
from .config_checks import check_numbers
from .data.sources import DataConfig
from .errors import ConfigError
from .core.spec import LayerHyper
from .core.optim import OptimConfig

MODEL_TYPES = ("ptncn", "bptt", "tbptt", "rtrl", "uoro", "esn", "lstm")
VARIANTS = ("inference_steps", "lateral_l1", "standardize")


@dataclass(frozen=True)
class ModelConfig(LayerHyper):
    """The `[model]` section: the hyper-parameters every layer carries (LayerHyper, the fields
    LayerSpec shares) and what belongs to the stack as a whole: its kind, widths, the first
    scored step, initial weight scales, dtype and device."""

    type: str = "ptncn"
    """What to train: ptncn, or a baseline (bptt, tbptt, rtrl, uoro, esn, lstm) sized by `[baseline]`."""
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    """The width of each layer, bottom first; its length is the number of layers (Ray actors)."""
    t_prime: int = 1
    """The first step of a sequence that learns and is scored; earlier steps only warm up the state."""
    weight_sd: float = 0.05
    """Standard deviation of the initial M, V, U and W weights."""
    error_weight_sd: float = 0.05
    """Standard deviation of the initial error-feedback weights E."""
    dtype: str = "float32"
    """The float type of weights, states and messages: float32 or float64."""
    device: str = "cpu"
    """Where each layer computes: cpu (NumPy) or gpu (CuPy; messages are the only thing that
    leaves the device)."""

    def __post_init__(self):
        if self.type not in MODEL_TYPES:
            raise ConfigError(f"model.type must be one of {list(MODEL_TYPES)}, not {self.type!r}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ConfigError(f"model.hidden must be a non-empty list of positive widths, not {self.hidden!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"model.dtype must be 'float32' or 'float64', not {self.dtype!r}")
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"model.device must be 'cpu' or 'gpu', not {self.device!r}")
        if self.t_prime < 0:
            raise ConfigError("model.t_prime must be >= 0")
        super().__post_init__()
        check_numbers("model", self)

    def numbers(self) -> dict:
        """The keys that determine the numbers, for the config hash: the variants beyond MODEL.md
        only when they are on, so a run without them keeps the hash it had before they existed."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(LayerHyper):
            if f.name in VARIANTS and d[f.name] == f.default:
                del d[f.name]
        return d


@dataclass
class TrainConfig:
    """The `[train]` section: how long a run trains, what it logs and evaluates, checkpoints and
    recovery."""

    steps: int = 10000
    """The step cap: training steps (time steps of a batch) a run takes at most."""
    seed: int = 0
    """Seed of the initial weights and of the data stream; part of the config hash."""
    log_every: int = 100
    """Steps between records in `metrics.jsonl` (train loss, steps/s, training seconds)."""
    eval_every: int = 2000
    """Steps between held-out evaluations; 0 is off. Text runs evaluate at the first sentence end
    after each multiple."""
    eval_batches: int = 4
    """Test batches per evaluation."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 is off (`checkpoint_minutes` still applies)."""
    checkpoint_minutes: float = 10.0
    """Minutes between checkpoints, so a long run is protected without asking; 0 is off."""
    max_minutes: float = 0.0
    """Time budget: the run ends once its training segments (evaluations and checkpoint writes
    left out) have taken this many minutes, even before `steps`; counted across `--resume`. 0 is off."""
    clock: str = "wall"
    """What `max_minutes`, `eval_every_minutes` and the recorded `train_s` count: "wall" (elapsed
    seconds) or "process" (this process's CPU seconds, every thread: on a shared machine a run
    is then given the same computation whatever else runs beside it; with `engine.name = "ray"`
    the layers' own processes are not counted)."""
    eval_every_minutes: float = 0.0
    """Evaluate every this many minutes of training time, instead of or besides `eval_every`; 0 is off."""
    checkpoint_dir: str = ""
    """Where checkpoints go: empty is `RUN_DIR/checkpoints`; a shared path holds each run under its
    run id; a URI (`s3://...`, `gs://...`) goes through pyarrow.fs."""
    keep_checkpoints: int = 3
    """How many complete checkpoints to keep; older ones are pruned after a new one is complete."""
    max_failures: int = 3
    """Recoveries from lost or hung layers a run may make before it gives up; -1 is unlimited."""
    plots: bool = True
    """Write `loss_curves.png`, `frames.png` and `loss_by_position.png` into the run directory."""
    progress: bool = True
    """Show a progress bar while training."""
    references: bool = True
    """Score the reference forecasts (mean and blurred frames, n-grams) once at step 0."""
    tensorboard: bool = True
    """Write TensorBoard event files when tensorboardX is installed (the `tensorboard` extra)."""

    def __post_init__(self):
        for key in ("steps", "log_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, not {getattr(self, key)!r}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("train.eval_every and train.checkpoint_every must be >= 0 (0 = off)")
        if self.clock not in ("wall", "process"):
            raise ConfigError(f"train.clock must be \"wall\" or \"process\", not {self.clock!r}")
        check_numbers("train", self)
        from .checkpoint.storage import check_location
        check_location(self.checkpoint_dir)


@dataclass
class EngineConfig:
    """The `[engine]` section: who computes which layer where, and how messages travel."""

    name: str = "local"
    """local (every layer in one process, the reference) or ray (one Ray actor per layer)."""
    address: str = ""
    """The Ray cluster to join: 'auto', HOST:PORT, or empty to start a private Ray on `node_ip`."""
    mode: str = "exact"
    """exact (MODEL.md's step, equal to the local engine) or pipelined (one exchange per step,
    neighbours' messages one step late: a different model)."""
    transport: str = "tcp"
    """tcp (direct ZeroMQ links between neighbours, CURVE-encrypted) or calls (one Ray actor call
    per round of messages)."""
    compiled: bool = False
    """Experimental: drive the step as a Ray compiled graph (ray.dag), one node per round."""
    placement: str = "pack"
    """pack (one node), spread (one layer per node, STRICT_SPREAD) or explicit (`nodes`)."""
    nodes: list[str] = field(default_factory=list)
    """For explicit placement: per layer, a node IP, a node id or a custom resource name."""
    cpus_per_layer: float = 1.0
    """CPUs each layer actor asks Ray for."""
    gpus_per_layer: float = 0.0
    """GPUs each layer actor asks Ray for (fractions share a GPU); set `model.device = "gpu"` too."""
    blas_threads: int = 0
    """BLAS threads per layer; 0 is one per CPU the layer asks for (the local engine: BLAS's default)."""
    in_flight: int = 8
    """Steps the compiled graph keeps in flight at once (at most 10)."""
    node_ip: str = "127.0.0.1"  # kept as is by ray_session, so every listener stays on loopback
    """The address of this machine's Ray node; 127.0.0.1 keeps every listener of a private Ray on
    loopback (see docs/security.md)."""
    placement_timeout_s: float = 60.0
    """Seconds to wait for the cluster to place every layer before failing with what is missing."""
    segment_timeout_s: float = 300.0
    """Seconds a segment may run without progress while every layer still beats; then it counts
    as a failure and is recovered."""
    heartbeat_s: float = 1.0
    """Seconds between a layer actor's heartbeats."""
    hung_after_s: float = 10.0
    """Seconds of silence after which a layer is hung: its process is killed and the run recovers
    (must exceed `heartbeat_s`)."""
    trace_steps: int = 0
    """Record every layer's phases for this many steps into `trace.json` (chrome://tracing,
    ui.perfetto.dev); 0 is off."""

    def __post_init__(self):
        if self.name not in ("local", "ray"):
            raise ConfigError(f"engine.name must be 'local' or 'ray', not {self.name!r}")
        if self.mode not in ("exact", "pipelined"):
            raise ConfigError(f"engine.mode must be 'exact' or 'pipelined', not {self.mode!r}")
        if self.placement not in ("pack", "spread", "explicit"):
            raise ConfigError(f"engine.placement must be 'pack', 'spread' or 'explicit', not {self.placement!r}")
        if self.transport not in ("calls", "tcp"):
            raise ConfigError(f"engine.transport must be 'calls' or 'tcp', not {self.transport!r}")
        if self.in_flight < 1:
            raise ConfigError("engine.in_flight must be >= 1")
        if not self.heartbeat_s > 0:
            raise ConfigError(f"engine.heartbeat_s must be > 0, not {self.heartbeat_s!r}")
        if not self.hung_after_s > self.heartbeat_s:
            raise ConfigError(f"engine.hung_after_s must be > engine.heartbeat_s ({self.heartbeat_s:g}), not "
                              f"{self.hung_after_s!r}: a layer is hung once it has missed several beats")
        check_numbers("engine", self)


SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "data": DataConfig,
            "train": TrainConfig, "engine": EngineConfig, "baseline": BaselineSection}


@dataclass
class Config:
    """A whole run's configuration: one dataclass per section (`SECTIONS`). Build it with `load`
    (TOML and `--set` overrides) or `from_dict`; every key is validated on construction."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    baseline: BaselineSection = field(default_factory=BaselineSection)

    def __post_init__(self):
        check_numbers("optim", self.optim)
        check_numbers("baseline", self.baseline)
        if self.model.inference_steps > 1 and self.engine.mode == "pipelined":
            raise ConfigError(f"model.inference_steps = {self.model.inference_steps} needs engine.mode = 'exact': "
                              "the pipelined schedule has one exchange per step and runs K = 1 only")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A digest of what determines the numbers (model, optim, data, seed): not logging."""
        d = self.to_dict()
        core = {k: d[k] for k in ("model", "optim", "data", "baseline")}
        core["model"] = self.model.numbers()
        core["baseline"] = self.baseline.numbers()
        core["data"] = self.data.numbers()
        core["seed"] = d["train"]["seed"]
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def valid_keys() -> list[str]:
    """Every config key as `section.key`, in section and field order."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _did_you_mean(name: str, choices: list[str]) -> str:
    """' did you mean X?' for the nearest valid name, or '' when none is near."""
    near = difflib.get_close_matches(name, choices, n=1)
    return f" did you mean {near[0]}?" if near else ""


def _coerce(section: str, f: dataclasses.Field, value, hints: dict):
    """Check `value` against the field's annotated type; ints are accepted for floats."""
    key = f"{section}.{f.name}"
    typ = hints[f.name]
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {item.__name__}, not {value!r}")
        return [_scalar(key, item, v) for v in value]
    return _scalar(key, typ, value)


def _scalar(key, typ, value):
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be of type {typ.__name__}, not {type(value).__name__} ({value!r})")


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from nested dicts (as TOML gives them)."""
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}];{_did_you_mean(section, list(SECTIONS))} "
                              f"valid sections: {sorted(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, not {repr(values):.60}")
        cls = SECTIONS[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {section}.{key};{_did_you_mean(f'{section}.{key}', valid_keys())} "
                                  "valid keys: " + ", ".join(valid_keys()))
            kwargs[key] = _coerce(section, fields[key], value, hints)
        sections[section] = cls(**kwargs)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, object]:
    """'section.key=value' -> (section, key, value); the value is read as TOML, else a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set takes section.key=value, not {text!r}; valid keys: " + ", ".join(valid_keys()))
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def load(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or the defaults), apply `--set` overrides, validate everything. The file
    must be UTF-8 TOML of at most 1 MiB (a config is a few KB); anything else is a ConfigError."""
    max_bytes = 1 << 20
    raw: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"{path} is a directory, not a config file (a TOML file such as "
                              f"experiments/configs/ptb_char.toml)") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        if len(data) > max_bytes:
            raise ConfigError(f"{path} is larger than {max_bytes:,} bytes: not a config file (a few KB of TOML)")
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: not UTF-8 text (byte {exc.start} is "
                              f"0x{data[exc.start]:02x}); is it a binary file?") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of keys, not {repr(table):.60} (in {path}); "
                              f"--set {text} cannot add a key to it")
        table[key] = value
    return from_dict(raw)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (what `load` reads back to an equal Config), by tomli-w: any
    string, emoji included, is written as TOML reads it."""
    import tomli_w
    return tomli_w.dumps(cfg.to_dict())
