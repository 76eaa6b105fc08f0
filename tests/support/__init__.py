"""What the tests share, imported rather than copied; conftest.py files only turn these into fixtures.

- corpus:     a small deterministic pretrain + SFT corpus
- presets:    tiny presets (hidden 32, 2 layers) on that corpus, and the one trained run they share
- fake_runs:  run directories and event lines written by hand, as the engine would leave them
- wait:       waiting on a condition (never a fixed sleep): sync and Textual-pilot versions
- stall_in_save: a run driver that stops inside a checkpoint write, for the kill -9 test
- held_chat:  the terminal chat with its first reply held inside generation, for the Ctrl-C test
- runs_cli:   the CLI as real processes (several at once), a stopped run to resume, a run's engine processes
- cache_builder: a token-cache build in a process of its own that can stall mid-build, for the cache lock tests
- kill_points: a run driver parked at one chosen point (inside tokenizer training, a cache build, a step, an
               eval or a checkpoint write) until it is SIGKILLed, for the kill-anywhere test
- full_disk:  a run on a small real tmpfs that fills up right before one chosen write, then resumed, for the disk-full tests
"""
