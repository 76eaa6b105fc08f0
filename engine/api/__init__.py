"""The engine's front door: what the CLI and the studio call, and the types they get back.

The studio imports `engine.api` (plus the light shared modules `engine.config`, `engine.events` and
`engine.errors`) and nothing deeper; an import-linter contract in pyproject.toml holds it to that. This
package is cheap to import: nothing here loads torch or transformers until a function that needs them
is called, so the studio can import it at start-up.

    engine.api.runs    a run's life from outside it: start, resume, stop, delete, list, find, watch
    engine.api.estimate  a preset's memory, fit and time on a device (detect_target, estimate)
    engine.api.export    the export formats and dtypes, and export itself
    engine.api.chat      a chat session with a checkpoint, and reading its streamed replies
    engine.api.data      inspecting, measuring and down-sampling jsonl files
    engine.api.errors    which failures are the user's to fix (a full disk included)
"""

from engine.api.runs import Run, RunState, RunSummary, StopReply

__all__ = ["Run", "RunState", "RunSummary", "StopReply"]
