"""Body scan cost: what the inference endpoint's body checks (JSON parse, nesting depth,
passthrough credential scan) cost per MB of an ordinary chat body and of bodies built to
make the scan backtrack, against the scan's previous URL pattern as the baseline.

Run: `.venv/bin/python bench/body_scan.py`. Prints a Markdown table and writes
bench/results/body_scan.json. See bench/README.md.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from auxen.httputil import _parse_object
from auxen.inference.passthrough import sanitise

HERE = Path(__file__).resolve().parent
MB = 1_000_000
# The pattern the scan used before it was made linear (tried at every letter).
OLD_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def body_of(content: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()


def ordinary(size: int) -> bytes:
    sentence = "The quick brown fox jumps over the lazy dog; see https://example.com/a?b=c. "
    return body_of(sentence * (size // len(sentence)))


def long_word(size: int) -> bytes:
    return body_of("a" * size)


def schemes(size: int) -> bytes:
    return body_of("a://" * (size // 4))


def many_strings(size: int) -> bytes:
    parts = [{"type": "text", "text": "a" * 30} for _ in range(size // 45)]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": parts}]}).encode()


def seconds(fn: Any, *args: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - started)
    return best


def old_scan_seconds(raw: bytes) -> float:
    text = json.loads(raw)["messages"][0]["content"]
    if not isinstance(text, str):
        return float("nan")
    return seconds(lambda: sum(1 for _ in OLD_URL.finditer(text)), repeat=1)


def main() -> None:
    rows = []
    for name, build in [
        ("ordinary prose", ordinary),
        ("one long word", long_word),
        ('"a://" repeated', schemes),
        ("many small strings", many_strings),
    ]:
        raw = build(MB)
        now = seconds(_parse_object, raw, sanitise)
        small = build(20_000)  # the old pattern is quadratic: measured on 20 KB only
        old_small = old_scan_seconds(small)
        rows.append(
            {
                "body": name,
                "bytes": len(raw),
                "check_ms_per_mb": round(now * 1000 * MB / len(raw), 1),
                "old_url_scan_ms_20kb": round(old_small * 1000, 1),
                "old_url_scan_s_per_mb_extrapolated": round(
                    old_small * (len(raw) / len(small)) ** 2, 1
                )
                if name in ("one long word",)
                else None,
            }
        )
    print("| body | check ms per MB (parse + depth + scan) | old URL scan, 20 KB, ms |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['body']} | {row['check_ms_per_mb']} | {row['old_url_scan_ms_20kb']} |")
    result = {
        "machine": f"{platform.machine()}, Python {sys.version.split()[0]}",
        "rows": rows,
    }
    (HERE / "results" / "body_scan.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
