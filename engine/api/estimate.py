"""The pre-flight estimate of a preset, computed once for `minimind-studio estimate` and the launch dialog.

`estimate` is arithmetic over the preset (engine/hardware/estimate.py, torch-free) unless asked to
calibrate, which runs real training steps here (engine/train/calibrate.py). `detect_target` asks this
machine which device a run would use and imports torch, so the studio calls it in a thread worker only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config import TRAIN_STAGES, Preset, StageName
from engine.errors import ResourceError
from engine.hardware.estimate import StageEstimate, Target, data_size, device_peak, estimate_stage, parse_bytes
from engine.hardware.flops import count_parameters, flops_per_token

__all__ = ["Estimate", "StageEstimate", "Target", "detect_target", "device_peak", "estimate", "parse_bytes", "target_key"]


@dataclass(frozen=True)
class Estimate:
    """Memory, fit and time of a preset's training stages on one target: what the report shows."""

    preset: str  # the preset's name
    parameters: int
    active_parameters: int  # per token: fewer than `parameters` for a mixture of experts
    flops_per_token: float  # training FLOPs per token at the first stage's sequence length
    target: Target
    stages: list[StageEstimate]  # the training stages only: the tokenizer stage needs next to no memory
    measured: dict[str, int] = field(default_factory=dict)  # stage -> tensor peak measured by a calibration

    @property
    def title(self) -> str:
        """'tiny: 1.9M parameters, 14 MFLOP per training token' (active parameters too for MoE)."""
        active = f" ({self.active_parameters / 1e6:,.1f}M active)" if self.active_parameters != self.parameters else ""
        return (f"{self.preset}: {self.parameters / 1e6:,.1f}M parameters{active}, "
                f"{self.flops_per_token / 1e6:,.0f} MFLOP per training token")

    @property
    def fits(self) -> bool | None:
        """False if any stage does not fit, None if the device memory is unknown, else True."""
        verdicts = [stage.fits for stage in self.stages]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    @property
    def misfits(self) -> list[StageEstimate]:
        return [stage for stage in self.stages if stage.fits is False]


def target_key(preset: Preset) -> tuple[str, str]:
    """What `detect_target(preset)`'s answer depends on, so a caller can keep it for the session."""
    return preset.runtime.device, preset.runtime.dtype


def detect_target(preset: Preset, *, device: str | None = None, gpu_name: str | None = None,
                  gpu_mem_bytes: int | None = None, dtype: str | None = None) -> Target:
    """The device the run would use (or the one named), its memory, dtype and matmul peak, resolved as
    training resolves them. A GPU named by `gpu_name` or `gpu_mem_bytes` is planned for, not asked for.
    Imports torch."""
    from engine.train.calibrate import detect_target as detect

    return detect(preset, device=device, gpu_name=gpu_name, gpu_mem_bytes=gpu_mem_bytes, dtype=dtype)


def estimate(preset: Preset, target: Target, *, stage: StageName | None = None, calibrate: bool = False,
             calibrate_steps: int = 20, on_calibrate: Callable[[str, int], None] | None = None) -> Estimate:
    """Each training stage of `preset` (or only `stage`) on `target`. With `calibrate`, throughput and the
    tensor peak are measured by `calibrate_steps` real training steps on this machine (torch; minutes on a
    big model), and `on_calibrate(stage, steps)` is told before each stage's measurement starts."""
    stages = [s for s in preset.stages if s in TRAIN_STAGES and (stage is None or s == stage)]
    if calibrate and target.device == "cuda" and not _cuda_here():
        # A planned GPU (--gpu / --gpu-mem) cannot be measured: calibration runs where it is asked.
        raise ResourceError("--calibrate measures on this machine, which has no CUDA GPU; drop --gpu/--gpu-mem")
    found: list[StageEstimate] = []
    measured: dict[str, int] = {}
    for name in stages:
        throughput, source = None, None
        if calibrate:
            from engine.train.calibrate import calibrate as measure

            if on_calibrate is not None:
                on_calibrate(name, calibrate_steps)
            result = measure(preset, name, target, steps=calibrate_steps)
            throughput = result.tokens_per_s
            source = f"measured over {result.steps} {'compiled' if result.compiled else 'eager'} steps"
            measured[name] = result.tensor_peak_bytes
        found.append(estimate_stage(preset, name, target, data_bytes=data_size(preset, name),
                                    tokens_per_s=throughput, throughput_source=source))
    total, active = count_parameters(preset.model)
    # The title's FLOPs are at the first training stage's sequence length (the one a run starts with).
    first = [s for s in preset.stages if s in TRAIN_STAGES]
    seq = preset.stage(first[0]).max_seq_len if first else 512
    return Estimate(preset.name, total, active, flops_per_token(preset.model, seq), target, found, measured)


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()
