"""The parallel token cache build: byte ranges across worker processes, merged in file order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data.cache_build import default_workers, line_ranges
from engine.data.token_cache import build_token_cache
from engine.errors import DataError
from tests.engine.chat_fixtures import (
    RECORDS,
    corpus_texts,
    write_jsonl,
)

DATA_FILES = ("tokens.bin", "mask.bin", "offsets.npy")


@pytest.fixture
def tok_dirs(builtin_dir: Path, minimind_dir: Path) -> dict[str, Path]:
    return {"builtin": builtin_dir, "minimind": minimind_dir}


def _same_cache(a, b) -> None:
    for name in DATA_FILES:
        if (a.dir / name).exists() or (b.dir / name).exists():
            assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes(), name
    drop = ("build_seconds", "workers")
    assert {k: v for k, v in a.meta.items() if k not in drop} == {k: v for k, v in b.meta.items() if k not in drop}


def test_line_ranges_cover_the_file_at_line_starts(tmp_path) -> None:
    """Guards against a range starting mid-line (a record cut in two, parsed as two bad lines) or a byte
    of the file belonging to no range or to two."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(b'{"text": "%s"}\n' % (b"x" * (i % 37)) for i in range(300)) + b'{"text": "no newline"}')
    data = path.read_bytes()
    for range_bytes in (1, 7, 100, 4096, 1 << 20):
        ranges = line_ranges(path, range_bytes)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:]))
        assert all(data[start - 1:start] == b"\n" for start, _ in ranges[1:])


@pytest.mark.parametrize("which", ["builtin", "minimind"])
def test_parallel_build_is_byte_identical_to_one_process(tmp_path, tok_dirs, which) -> None:
    """Guards against a parallel build that reorders documents, drops or repeats a record at a range
    boundary, or renumbers the skipped lines: it must write exactly what one process writes."""
    lines: list = ["\ufeff" + json.dumps(RECORDS[0], ensure_ascii=False)]  # a byte order mark on line 1
    for i in range(40):
        lines += [RECORDS[i % len(RECORDS)], "", "{broken" if i % 7 == 3 else {"conversations": "no list"}]
    sft = write_jsonl(tmp_path / "sft.jsonl", lines)
    pretrain = write_jsonl(tmp_path / "pretrain.jsonl", [{"text": t} if i % 11 else "[1]" for i, t in enumerate(corpus_texts())])
    for path, kind in ((sft, "sft"), (pretrain, "pretrain")):
        one = build_token_cache(path, tok_dirs[which], kind, tmp_path / f"one-{kind}", on_bad_line="skip", workers=1)
        many = build_token_cache(path, tok_dirs[which], kind, tmp_path / f"many-{kind}", on_bad_line="skip",
                                 workers=2, range_bytes=2048)
        assert many.meta["workers"] == 2 and one.meta["workers"] == 1
        _same_cache(one, many)
        assert one.meta["stats"]["skipped"] > 10 and one.n_docs > 40
        assert not list(many.dir.glob("part-*"))


def test_parallel_build_reports_the_first_bad_line_in_file_order(tmp_path, tok_dirs) -> None:
    """Guards against a parallel build naming whichever bad line a worker met first, or a wrong line
    number (counted from its range instead of the file), or leaving part files behind."""
    records = [{"text": t} for t in corpus_texts()]
    records[len(records) // 3] = "{first broken"
    records[2 * len(records) // 3] = "{second broken"
    path = write_jsonl(tmp_path / "d.jsonl", records)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        build_token_cache(path, tok_dirs["builtin"], "pretrain", cache_dir, workers=2, range_bytes=1024)
    assert str(info.value).startswith(f"{path}:{len(records) // 3 + 1}: not valid JSON")
    assert 'pretrain.on_bad_line = "skip"' in str(info.value)
    assert [p.name[:6] for p in cache_dir.iterdir()] == [".lock-"]  # no part files: only the build lock's file


def test_progress_reaches_the_file_size(tmp_path, tok_dirs) -> None:
    """Guards against a build that reports nothing (minutes of silence on a large file) or never reaches 100%."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in corpus_texts()])
    size = path.stat().st_size
    for workers, cache in ((1, "one"), (2, "many")):
        seen: list[tuple[int, int]] = []
        build_token_cache(path, tok_dirs["builtin"], "pretrain", tmp_path / cache, batch_size=50, workers=workers,
                          range_bytes=4096, progress=lambda done, total, seen=seen: seen.append((done, total)))
        assert len(seen) > 1 and seen[-1] == (size, size) and all(total == size for _, total in seen)
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_small_files_build_in_one_process() -> None:
    """Guards against paying several seconds of worker start-up (each imports transformers) for a small file."""
    assert default_workers(10 << 20) == 1
    assert default_workers(10 << 30) >= 1
