"""Canonical JSON benchmark: ``canonical_json_bytes`` (secrets scan + checks + encoding) vs ``rfc8785.dumps``.

    python bench/canonical_json.py [--rounds R]

The measurement of ``bench/store_append.py`` (same contexts, same ``measure`` p50s, the ratio against
``rfc8785.dumps`` measured in the same run), repeated for R rounds (default 7) because the machine is shared and
noisy; each round prints its figures, then the median of each figure over the rounds. Goal: ≥ 5× at 2.5 KB and at
100 KB. Asserts nothing (beyond the outputs being equal).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rfc8785

from bench._util import measure
from bench.store_append import context
from engine.hashing import canonical_json_bytes, canonical_json_bytes_reference

SIZES = (("2.5 KB", 2500, 3000), ("100 KB", 100_000, 60))


def one_round(ctx: dict[str, object], n: int) -> tuple[float, float, float]:
    """p50s (µs) of canonical_json_bytes, rfc8785.dumps and checks + rfc8785, measured in turn."""
    fast = measure(lambda: canonical_json_bytes(ctx), n)
    ref = measure(lambda: rfc8785.dumps(ctx), n)
    full_ref = measure(lambda: canonical_json_bytes_reference(ctx), max(n // 3, 20))
    return fast.p50, ref.p50, full_ref.p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds per size (default 7); medians are printed")
    args = parser.parse_args()
    print("canonical JSON (secrets scan + float/int checks + encoding) vs rfc8785.dumps alone:")
    for label, target, n in SIZES:
        ctx = context(target)
        out = canonical_json_bytes(ctx)
        assert out == rfc8785.dumps(ctx)
        rounds = []
        for r in range(args.rounds):
            fast, ref, full_ref = one_round(ctx, n)
            rounds.append((fast, ref, full_ref, ref / fast))
            print(
                f"  {label} round {r + 1}: canonical_json_bytes p50 {fast:8.1f} µs | rfc8785.dumps p50 {ref:8.1f} µs"
                f" | checks + rfc8785 p50 {full_ref:8.1f} µs | speed-up {ref / fast:.1f}×"
            )
        fast, ref, full_ref, ratio = (statistics.median(col) for col in zip(*rounds, strict=True))
        mb_s = len(out) / (fast / 1e6) / 1e6
        print(
            f"  {label} ({len(out)} B), median of {args.rounds} rounds: canonical_json_bytes p50 {fast:.1f} µs "
            f"({mb_s:.0f} MB/s) | rfc8785.dumps p50 {ref:.1f} µs | checks + rfc8785 p50 {full_ref:.1f} µs\n"
            f"    speed-up vs rfc8785.dumps {ratio:.1f}× (goal ≥ 5×); vs the same checks + rfc8785 encoding "
            f"{full_ref / fast:.1f}×"
        )


if __name__ == "__main__":
    main()
