"""This process's place in a torchrun job, and everything the training loop does differently there.

A run of one process has no process group at all (`World.single()`): no collectives, no wrappers,
exactly the single-device path. Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment)
`World.from_env` joins the process group (nccl on CUDA, gloo on a CPU, with a timeout so a dead peer
ends the job instead of hanging it) and the model is wrapped as the preset asks:

- ddp: DistributedDataParallel, with buffer broadcasting off — the rotary cos/sin tables grow on
  demand, and an eval or sample on rank 0 alone would otherwise make the next broadcast mismatch.
- fsdp: FSDP2 `fully_shard` per decoder layer, then the root, on an explicit device mesh (on a CPU
  FSDP would otherwise pick CUDA when present). Every forward is then a collective, so evaluation
  runs on every rank and the sample runs on a full copy gathered to rank 0.

Checkpoints stay consolidated (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`): the
optimizer state is keyed by parameter name, so it loads under any wrapping and world size, and
rank 0 reads a checkpoint and broadcasts it (`broadcast_from_rank0`), so other nodes need no copy.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

Strategy = Literal["ddp", "fsdp"]

# The host-side group's patience: rank 0 alone may train a tokenizer, build a token cache of a 10 GB file
# or score held-out questions while the others wait in it; a dead rank ends the job through torchrun.
HOST_WAIT = datetime.timedelta(days=1)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    strategy: Strategy = "ddp"
    # gloo, on the CPU, for the loop's own small collectives (counts, stop votes, objects, barriers): they
    # never wait on a GPU stream, and their timeout is not the training collectives' timeout_s.
    host_group: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def single(cls) -> World:
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process of its node: builds the node's token cache while the others wait."""
        return self.local_rank == 0

    @classmethod
    def from_env(cls, device_type: str, strategy: Strategy, timeout_s: float) -> World:
        """Join the torchrun job this process was started in (a one-process World outside torchrun)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls.single()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank, local_rank, size, strategy, dist.new_group(backend="gloo", timeout=HOST_WAIT))

    def device_for(self, device: torch.device) -> torch.device:
        """The device this rank trains on: its own GPU (cuda:LOCAL_RANK), or the CPU."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    # ----------------------------------------------------------------------------------------
    # Wrapping the model

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training step calls: the model itself, DDP around it, or the model sharded in place."""
        if not self.distributed:
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            with warnings.catch_warnings():
                # broadcast_buffers is deprecated for forward_sync_buffers, which still syncs at init; the
                # rotary tables are rank-local by design, so the old switch is the one that says so.
                warnings.simplefilter("ignore", FutureWarning)
                # A mixture-of-experts layer skips an expert that no token chose, leaving its weights unused
                # in that step: DDP must look for such parameters or it stops at the next step.
                return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=False,
                                               find_unused_parameters=bool(getattr(model.config, "use_moe", False)))
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # Weights stay float32 masters, gathered as such; autocast makes the compute bf16 exactly as on
        # one device, so the strategies differ in memory and communication, not in numerics.
        mesh = init_device_mesh(device.type, (self.size,))
        for layer in model.model.decoder_layers():  # type: ignore[operator, union-attr]
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    @staticmethod
    def inner(wrapped: torch.nn.Module) -> torch.nn.Module:
        """The model under a DDP wrapper (FSDP2 shards in place: the model is its own wrapper)."""
        return wrapped.module if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped

    @contextlib.contextmanager
    def gradient_sync(self, wrapped: torch.nn.Module, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on micro-batches that are not the step's last (accumulation)."""
        if not self.distributed or sync:
            if self.strategy == "fsdp" and self.distributed:
                wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]
            yield
            return
        if self.strategy == "ddp":
            with wrapped.no_sync():  # type: ignore[operator]
                yield
        else:
            wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
            yield

    # ----------------------------------------------------------------------------------------
    # Collectives (all no-ops for one process)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a few numbers (one small all-reduce on the host)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, group=self.host_group)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (on every rank)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value, group=self.host_group)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.host_group)

    def close(self) -> None:
        """Leave the process group (ranks that exit without it intermittently abort at exit)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
