"""This machine's measured facts, kept between runs: `<runtime.cache_dir>/tuning.json`.

Some choices can only be made by measuring on the machine itself: the matmul peak that MFU is
measured against, which attention kernel is faster at a shape, whether torch.compile paid off for a
model at a batch shape. Each is measured the first time it is needed and recorded here under a
machine key (device, CPU or GPU model, thread count, torch version), so the next run on the same
machine reuses it and a run on another machine, or under another torch, measures afresh.

    {"cpu|AMD EPYC|threads=2|torch=2.13.0+cpu": {"peak|bfloat16": {...}, "attention|...": {...}}}

It is a cache: an unreadable file is treated as empty, and two runs writing at once can at worst
lose one entry, which is measured again later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_json_atomic
from engine.hardware.cpu import cpu_info

RECORD_FILE = "tuning.json"


def machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda|{torch.cuda.get_device_name(device)}|torch={torch.__version__}"
    return f"{device.type}|{cpu_info().model}|threads={torch.get_num_threads()}|torch={torch.__version__}"


class TuningRecord:
    """The entries of one machine in the record file (in memory only when cache_dir is None)."""

    def __init__(self, cache_dir: Path | None, device: torch.device | str = "cpu") -> None:
        self.path = Path(cache_dir) / RECORD_FILE if cache_dir else None
        self.machine = machine_key(torch.device(device))
        self._memory: dict[str, Any] = {}

    def _read_all(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any | None:
        if key in self._memory or self.path is None:
            return self._memory.get(key)
        entries = self._read_all().get(self.machine)
        return entries.get(key) if isinstance(entries, dict) else None

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            self._memory[key] = value
            return
        data = self._read_all()  # read again just before writing: another run may have added entries
        entries = data.get(self.machine)
        if not isinstance(entries, dict):
            entries = data[self.machine] = {}
        entries[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, data)
        except OSError:
            self._memory[key] = value  # a read-only cache dir: remember for this process only
