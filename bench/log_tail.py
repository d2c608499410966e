"""The logs view's first read of a large worker log: ``mfm_tui.log_tail.LogTail`` (aiofiles, the last 256 KiB)
against the floor of reading the whole file (what a naive viewer does before it can show the end).

    python bench/log_tail.py [--mb 100] [--n 15]

A 100 MB log (real lines, in the page cache after the first read) is read both ways, interleaved; the figure is
the ratio of the two p50s measured in the same run, and the bytes each read. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import bench_dir, interleaved
from mfm_tui.log_tail import LogTail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args()
    with bench_dir("mfm-logtail-") as folder:
        path = folder / "worker.log"
        line = b"[2026-12-07T17:00:00] worker 4101: step 123456 of demo_big, an ordinary log line\n"
        block = line * ((1 << 20) // len(line))
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(block)
        size = path.stat().st_size
        last: list[int] = []

        async def tail_first_read() -> None:
            tail = LogTail(str(path))
            got = await tail.read_new()
            last[:] = [tail.bytes_read, len(got.lines)]

        def whole_file() -> None:
            with open(path, "rb") as f:
                f.read().rsplit(b"\n", 50)

        stats = interleaved({"tail": tail_first_read, "whole": whole_file}, args.n, warmup=2)
        tail_s, whole_s = stats["tail"], stats["whole"]
        print(f"log: {size / 1e6:.0f} MB; first read: {last[0] / 1024:.0f} KiB, {last[1]} lines shown")
        print(f"LogTail first read p50 {tail_s.p50 / 1000:.2f} ms; whole-file read p50 {whole_s.p50 / 1000:.2f} ms")
        print(f"LogTail first read costs {tail_s.p50 / whole_s.p50:.4f}× the whole-file read (p50, same run)")


if __name__ == "__main__":
    main()
