"""The preset schema: every knob of a run, validated once at the boundary.

A preset is a TOML file. It names the stages to run (tokenizer -> pretrain -> sft) and carries one
section per stage plus the model shape, the runtime and tracking. Loading goes through
`load_preset`, which turns TOML and pydantic errors into a `PresetError` whose message names the
file, the field path and the fix in one paragraph.
"""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.errors import PresetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

StageName = Literal["tokenizer", "pretrain", "sft"]
STAGE_ORDER: tuple[StageName, ...] = ("tokenizer", "pretrain", "sft")
TRAIN_STAGES: tuple[StageName, ...] = ("pretrain", "sft")
# Stages defined outside this file (engine.stages.register with a section): name -> the model of its [name]
# section. They run after the built-in stages, in the order they were registered.
EXTRA_SECTIONS: dict[str, type[BaseModel]] = {}


def register_stage_section(name: str, section: type[BaseModel]) -> None:
    """Let presets name stage `name` in `stages` and carry a `[name]` section validated by `section`."""
    if name in STAGE_ORDER or name in Preset.model_fields:
        raise ValueError(f"{name!r} is a built-in stage or preset field")
    EXTRA_SECTIONS[name] = section


def stage_order() -> tuple[str, ...]:
    return (*STAGE_ORDER, *EXTRA_SECTIONS)

# The folder that holds presets/ and dataset/; relative paths fall back to it so the built-in
# presets work from any working directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent



class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, populate_by_name=True, validate_assignment=True
    )


class ModelConfig(_Section):
    """The architecture: a Llama-style decoder, optionally with mixture-of-experts feed-forwards."""

    vocab_size: int = Field(6400, ge=16)
    """Token vocabulary size; must equal the tokenizer's vocabulary."""
    hidden_size: int = Field(512, ge=8, validation_alias=AliasChoices("hidden_size", "dim"))
    """Width of the residual stream (alias: dim)."""
    num_hidden_layers: int = Field(8, ge=1, validation_alias=AliasChoices("num_hidden_layers", "n_layers"))
    """Number of transformer blocks (alias: n_layers)."""
    num_attention_heads: int = Field(8, ge=1)
    """Query heads; hidden_size must be divisible by it."""
    num_key_value_heads: int = Field(2, ge=1)
    """Key/value heads for grouped-query attention; must divide num_attention_heads."""
    intermediate_size: int | None = Field(None, ge=1)
    """SwiGLU hidden width; empty means 8/3 * hidden_size rounded up to a multiple of 64."""
    max_position_embeddings: int = Field(32768, ge=16)
    """Longest sequence the rotary embedding is prepared for (generation may go this far)."""
    rope_theta: float = Field(1e6, gt=0)
    """Base of the rotary position embedding."""
    rms_norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of RMSNorm."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on attention weights and residual branches (0 for pretraining small models)."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output projection (saves vocab_size * hidden_size params)."""
    use_moe: bool = False
    """Replace each feed-forward with a mixture of experts."""
    num_experts: int = Field(4, ge=1)
    """Routed experts per MoE layer."""
    num_experts_per_tok: int = Field(2, ge=1)
    """Experts each token is routed to (top-k)."""
    num_shared_experts: int = Field(1, ge=0)
    """Experts every token always passes through, beside the routed ones."""
    moe_aux_loss_coef: float = Field(0.01, ge=0)
    """Weight of the load-balancing loss that keeps the router from collapsing onto few experts."""
    norm_topk_prob: bool = True
    """Renormalise the top-k router probabilities to sum to one."""

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); pick heads so that hidden_size / heads is a whole head size"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads}); each key/value head serves a whole group of query heads"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("hidden_size / num_attention_heads must be even for rotary embeddings")
        if self.use_moe and self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) cannot exceed num_experts ({self.num_experts})"
            )
        if self.intermediate_size is None:
            # The minimind/Llama habit: 8/3 of the width keeps SwiGLU's FLOPs equal to a 4x MLP.
            self.intermediate_size = 64 * math.ceil(self.hidden_size * 8 / 3 / 64)
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        """intermediate_size as the model uses it: an empty one is filled in by validation."""
        assert self.intermediate_size is not None, "_check_shape fills it on every validation"
        return self.intermediate_size

    def architecture(self) -> dict[str, Any]:
        """The fields that must match for weights to load (dropout may differ between stages)."""
        return self.model_dump(exclude={"dropout", "max_position_embeddings", "moe_aux_loss_coef"})


class RuntimeConfig(_Section):
    """Where and how the run executes."""

    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    """auto | cpu | cuda | cuda:N | mps. auto picks CUDA, then MPS, then the CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision (autocast). auto: bfloat16 on GPUs and CPUs that support it, else float32/float16."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the model: a slow first step (15-90 s), then faster steps (1.1-1.6x on a CPU, 2x on a
    GPU, bench/RESULTS.md). auto: on CUDA; on a CPU, a stage longer than about five minutes measures
    eager vs compiled steps once per machine and shape and keeps the faster (cache_dir/tuning.json).
    true/false mean on/off. Falls back to eager with a warning if compiling fails."""
    activation_checkpointing: bool = False
    """Keep only each layer's input and recompute the rest in backward: activation memory drops to about
    one layer's worth, at the price of one more forward (bench/RESULTS.md has the measured trade-off)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes; 0 reads batches in the main process (cheap with the token cache)."""
    data_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Processes that tokenize a data file into the token cache, in byte ranges (the cache is the same
    bytes for any number). auto: all cores but one for files of 64 MiB and more, else one."""
    cache_dir: str = "runs/.cache"
    """Where tokenized data caches live; shared by all runs so a corpus is tokenized once."""
    peak_tflops: float | None = Field(None, gt=0)
    """Peak TFLOP/s that MFU is measured against; empty: the GPU's datasheet figure, or measured on a CPU."""

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: Any) -> Any:
        # `compile = true` in TOML (and --set runtime.compile=false) keep working.
        return {True: "on", False: "off"}[value] if isinstance(value, bool) else value


class DistributedConfig(_Section):
    """Training on several processes through torchrun: GPUs of one node, several nodes, or CPU processes."""

    nproc_per_node: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    """Processes (one per GPU) on this node. 1 trains in this process with no process group; auto: one
    per visible GPU (1 without a GPU)."""
    nnodes: int = Field(1, ge=1)
    """Machines taking part; each runs the same preset with its own node_rank."""
    node_rank: int = Field(0, ge=0)
    """This machine's place among the nodes: 0 writes the run directory (events, status, checkpoints)."""
    rdzv_endpoint: str = "localhost:29400"
    """host:port on node 0 that every node meets at (torchrun's rendezvous; the port must be open between
    the nodes); ignored on one node, which picks a free port itself."""
    rdzv_backend: Literal["static", "c10d"] = "static"
    """static: ranks follow node_rank, so node 0 holds rank 0 and its run directory is the one written
    (what you watch in the studio). c10d: torchrun's elastic rendezvous, which numbers nodes by host name,
    so the node that writes the run directory is the one whose name sorts first."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every process holds the whole model and optimizer (fastest while they fit); fsdp: weights,
    gradients and AdamW state are sharded across processes (FSDP2), for models that do not fit one GPU."""
    max_restarts: int = Field(0, ge=0)
    """After a failure, relaunch this many times, each resuming from the newest checkpoint."""
    timeout_s: float = Field(600.0, gt=0)
    """How long a collective may wait for a missing process before the job fails instead of hanging."""

    @model_validator(mode="after")
    def _check_node_rank(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes} (nodes count from 0)")
        return self


class SwanlabConfig(_Section):
    """SwanLab experiment tracking."""

    mode: Literal["disabled", "local", "offline", "cloud"] = "disabled"
    """disabled | local | offline | cloud. cloud without network or credentials only warns."""
    project: str = "minimind-studio"
    """SwanLab project name."""
    experiment: str | None = None
    """Experiment name; empty means the run id."""
    logdir: str | None = None
    """Where local/offline logs go; empty means <run dir>/swanlog."""


class TrackingConfig(_Section):
    """Experiment trackers the run reports to, besides its own events file."""

    swanlab: SwanlabConfig = Field(default_factory=SwanlabConfig)
    """SwanLab settings."""


class TokenizerStage(_Section):
    """Stage 1: train a ByteLevel BPE tokenizer, or adopt an existing Hugging Face tokenizer directory."""

    data_path: str = "dataset/pretrain.jsonl"
    """jsonl corpus ({"text": ...} per line) to train on. When adopting (from_dir) it only measures
    characters per token, and may be absent."""
    from_dir: str | None = None
    """An existing HF tokenizer directory to use instead of training one (e.g. minimind's model/ folder);
    its chat template is kept."""
    heldout_lines: int = Field(200, ge=0)
    """Last lines of the corpus kept out of training and used to report characters per token."""
    max_train_chars: int | None = Field(None, ge=1)
    """Stop feeding the trainer after this many characters (large corpora need far less)."""
    model_max_length: int = Field(32768, ge=16)
    """model_max_length written to tokenizer_config.json."""
    on_bad_line: Literal["error", "skip"] = "error"
    """What to do with a malformed jsonl line: stop with its line number, or skip and count it. When the
    tokenizer reads the same file as pretraining and pretrain.on_bad_line = "skip", its bad lines are
    skipped here too (one file, one rule)."""


class TrainStage(_Section):
    """A training stage (pretrain or SFT): data, schedule, optimizer and bookkeeping."""

    data_path: str = "dataset/pretrain.jsonl"
    """jsonl data: {"text": ...} lines for pretrain, {"conversations": [...]} lines for SFT."""
    from_weight: str | None = None
    """Start from these weights: a checkpoint dir, a run dir, 'latest' (newest matching pretrain
    checkpoint under out_dir) or an HF model dir. Empty: the previous stage of this run, or random init."""
    epochs: int = Field(1, ge=1)
    """Passes over the data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run instead of whole epochs."""
    batch_size: int = Field(32, ge=1)
    """Sequences per micro-batch."""
    accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step (effective batch = batch_size * accumulation_steps)."""
    max_seq_len: int = Field(512, ge=8)
    """Tokens per training sequence; documents are packed into blocks of this length."""
    learning_rate: float = Field(5e-4, gt=0)
    """Peak learning rate, reached after warmup."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """The cosine decay ends at learning_rate * min_lr_ratio."""
    warmup_iters: int = Field(0, ge=0)
    """Optimizer steps of linear warmup from zero."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay, applied to matrices only (not norms)."""
    beta1: float = Field(0.9, gt=0, lt=1)
    """AdamW beta1."""
    beta2: float = Field(0.95, gt=0, lt=1)
    """AdamW beta2."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 disables clipping)."""
    skip_nonfinite_steps: int = Field(0, ge=0)
    """Skip up to this many optimizer steps whose loss or gradients are NaN/inf (the update is dropped,
    each skip is a warning event and counted in step events); 0 stops the run at the first one. Above 0,
    every step checks its gradients, which costs one host synchronisation per step."""
    log_interval: int = Field(10, ge=1)
    """Optimizer steps between logged metrics."""
    eval_interval: int = Field(0, ge=0)
    """Optimizer steps between held-out evaluations (0: only at the end of the stage)."""
    eval_fraction: float = Field(0.02, ge=0, lt=0.5)
    """Share of sequences held out for evaluation."""
    eval_max_batches: int = Field(20, ge=1)
    """Cap on batches per evaluation so it stays quick."""
    save_interval: int = Field(1000, ge=1)
    """Optimizer steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """How many checkpoints of this stage to keep; older ones are deleted."""
    on_bad_line: Literal["error", "skip"] = "error"
    """What to do with a malformed jsonl line: stop with its line number, or skip and count it."""
    heldout_path: str | None = None
    """Optional jsonl of held-out questions ({"messages": [...], "answer": "..."}) answered greedily after
    the stage and scored by exact match (the built-in dataset/heldout.jsonl checks the tiny preset)."""


def _sft_defaults() -> TrainStage:
    return TrainStage(data_path="dataset/sft.jsonl", learning_rate=1e-4, weight_decay=0.0)


class Preset(_Section):
    """A whole run: which stages to execute and how."""

    name: str = Field("preset", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Short name used in run ids (letters, digits, . _ -)."""
    description: str = ""
    """One line shown in the studio's preset list."""
    stages: list[str] = Field(default_factory=lambda: [str(name) for name in STAGE_ORDER])
    """Stages to run, in order: any of tokenizer, pretrain, sft."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    out_dir: str = "runs"
    """Folder that holds run directories."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model architecture."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Device, precision and workers."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Several processes, GPUs or nodes (torchrun)."""
    tokenizer: TokenizerStage = Field(default_factory=TokenizerStage)
    """Stage 1 settings."""
    pretrain: TrainStage = Field(default_factory=TrainStage)
    """Stage 2 settings."""
    sft: TrainStage = Field(default_factory=_sft_defaults)
    """Stage 3 settings."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Experiment tracking."""
    _extra_sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)  # [name] of registered stages

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        order = stage_order()
        unknown = [s for s in stages if s not in order]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages are {', '.join(order)}")
        return stages

    @model_validator(mode="after")
    def _check_stages(self) -> Preset:
        order = stage_order()
        if not self.stages:
            raise ValueError("stages is empty; list at least one of tokenizer, pretrain, sft")
        if len(set(self.stages)) != len(self.stages) or self.stages != sorted(self.stages, key=order.index):
            raise ValueError(f"stages {self.stages} must be distinct and in the order {', '.join(order)}")
        first_train = next((s for s in self.stages if s in TRAIN_STAGES), None)
        has_tokenizer = "tokenizer" in self.stages or self.tokenizer.from_dir
        if first_train and not has_tokenizer and not self.stage(first_train).from_weight:
            raise ValueError(
                f"stage {first_train} has no tokenizer: add 'tokenizer' to stages, set tokenizer.from_dir "
                f"to an existing tokenizer directory, or set {first_train}.from_weight to a checkpoint"
            )
        if self.stages == ["sft"] and not self.sft.from_weight:
            raise ValueError("an SFT-only preset needs sft.from_weight (a pretrain checkpoint, a run dir or 'latest')")
        return self

    def stage(self, name: str) -> TrainStage:
        """The section of a training stage (pretrain, sft)."""
        if name not in TRAIN_STAGES:
            raise KeyError(name)
        return getattr(self, name)

    def section(self, name: str) -> BaseModel:
        """The `[name]` section of any stage, built-in or registered (its defaults when the file has none)."""
        if name in STAGE_ORDER:
            return getattr(self, name)
        if name not in self._extra_sections:
            self._extra_sections[name] = EXTRA_SECTIONS[name]()
        return self._extra_sections[name]


# --------------------------------------------------------------------------------------------
# Loading, overrides and saving


def parse_override(text: str) -> tuple[list[str], Any]:
    """'pretrain.batch_size=16' -> (['pretrain', 'batch_size'], 16). Values are read as TOML, else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise PresetError(f"--set {text!r}: expected section.key=value, for example --set pretrain.batch_size=16")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [part.strip() for part in key.split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PresetError(f"--set {text!r}: {part!r} is a value, not a section")
        node[path[-1]] = value
    return data


def _field_names(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Names the schema allows at `path` (used to suggest a fix for a misspelt field)."""
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One paragraph naming each bad field, what is wrong and what to do."""
    parts: list[str] = []
    by_field: dict[str, int] = {}  # a union field fails once per alternative: one sentence, joined with "or"
    for item in error.errors():
        # pydantic names the alternative of a union it tried ("constrained-int", "literal['auto']"): not a field.
        loc = tuple(p for p in item["loc"] if isinstance(p, int) or ("-" not in p and "[" not in p))
        field = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            known = _field_names(Preset, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known fields here: {', '.join(known)}"
            parts.append(f"unknown field '{field}' ({hint})")
        else:
            message = item["msg"].removeprefix("Value error, ")
            if field in by_field:
                parts[by_field[field]] += f", or {message[0].lower()}{message[1:]}"
                continue
            got = item.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            by_field[field] = len(parts)
            parts.append(f"field '{field}'{shown}: {message}")
    return f"{source}: invalid preset: " + "; ".join(parts) + ". Fix the field(s) in the file or with --set, then run again."


def preset_from_dict(data: dict[str, Any], source: str = "preset") -> Preset:
    # Registered stages' sections are validated by their own models; everything else by Preset (typos caught).
    data = dict(data)  # the caller's dict stays as it was
    extra = {name: data.pop(name) for name in list(data) if name in EXTRA_SECTIONS}
    try:
        preset = Preset.model_validate(data)
    except ValidationError as error:
        raise PresetError(describe_validation_error(error, source)) from None
    for name, value in extra.items():
        try:
            preset._extra_sections[name] = EXTRA_SECTIONS[name].model_validate(value)
        except ValidationError as error:
            raise PresetError(describe_validation_error(error, f"{source} [{name}]")) from None
    return preset


def load_preset(path: str | Path, overrides: list[str] | None = None) -> Preset:
    """Read a preset file, apply --set overrides and validate. Raises PresetError with a readable message."""
    path = Path(path)
    if not path.exists():  # a shipped preset by name ("tiny") or by its path in the project ("presets/tiny.toml")
        candidate = PROJECT_ROOT / "presets" / f"{path}.toml" if not path.suffix else resolve_path(path)
        path = candidate if candidate.exists() else path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PresetError(f"{path}: cannot read the preset ({error.strerror}); check the path or pick one of presets/*.toml") from None
    except UnicodeDecodeError as error:
        raise PresetError(f"{path}: not UTF-8 text (byte {error.start}); a preset is a TOML text file: save it as UTF-8 "
                          "and run again") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PresetError(f"{path}: not valid TOML: {error}. Fix the syntax at that line and run again.") from None
    data.setdefault("name", path.stem)
    return preset_from_dict(apply_overrides(data, overrides or []), str(path))


def preset_to_toml(preset: Preset) -> str:
    import tomli_w

    data = preset.model_dump(mode="json", exclude_none=True)
    data.update({name: section.model_dump(mode="json", exclude_none=True) for name, section in preset._extra_sections.items()})
    return tomli_w.dumps(data)


def save_preset(preset: Preset, path: str | Path) -> None:
    from engine.atomic import write_text_atomic

    write_text_atomic(Path(path), preset_to_toml(preset))


def output_path(value: str | Path) -> Path:
    """A place we write (out_dir, cache_dir, logdir): always relative to the working directory."""
    return Path(value).expanduser().resolve()


def resolve_path(value: str | Path) -> Path:
    """A path we read: absolute, else relative to the working directory, else to the project folder
    (so the built-in presets and dataset/ are found from anywhere). Never use it for outputs."""
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return (PROJECT_ROOT / path).resolve()
    return path.resolve()
