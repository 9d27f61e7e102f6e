"""Reading JSONL event files (`kpi send`, `kpi replay`): one JSON event per line, `-` is stdin."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from rich.progress import Progress


class Line(NamedTuple):
    source: str  # the file name, or "-"
    number: int  # 1-based line number in that file
    raw: bytes  # the line without surrounding white space


def _open(name: str) -> IO[bytes]:
    return sys.stdin.buffer if name == "-" else open(name, "rb")


def read_lines(names: Sequence[str], progress: Progress | None = None) -> Iterator[Line]:
    """Every non-blank line of the files, in order; the progress bar advances by bytes read."""
    for name in names:
        task = None
        if progress is not None and name != "-":
            task = progress.add_task(Path(name).name, total=Path(name).stat().st_size)
        stream = _open(name)
        try:
            for number, raw in enumerate(stream, start=1):
                if progress is not None and task is not None:
                    progress.advance(task, len(raw))
                stripped = raw.strip()
                if stripped:
                    yield Line(name, number, stripped)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
