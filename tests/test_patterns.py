"""Every regular expression Auxen applies to text runs in time linear in that text.

Python's `re` backtracks, so a pattern that can be tried at every position and scan to
the end from each (a scheme pattern before "://" on a long word, say) takes quadratic
time: a 1 MB body once held the event loop for minutes. The audit below finds every
compiled pattern in the package and requires it to be listed here, reviewed; then each
one is run over a few hundred kilobytes of the inputs that make such patterns backtrack,
which a quadratic pattern could not finish in the life of the test run. Inline `re.*`
calls are not allowed except on text Auxen itself or a provider produced.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import auxen

N = 300_000  # characters of adversarial text per input

# Every compiled pattern in auxen, by its source. Reviewed: each attempt starts only at a
# literal or a single position (anchors, lookbehind) and scans a run no later attempt
# scans again, or its repeats are bounded by small constants.
REVIEWED = {
    r"\b(?:auxen_(?:live|test)_|auxk_)[A-Za-z0-9_]{16,}",
    r"://(?<=[A-Za-z0-9+.\-]://)[^\s\"'<>/?#@]*@",
    r"\b(auxen_(?:live|test)_|auxk_|auxo_|auxr_|whsec_)[A-Za-z0-9_\-]{8,}",
    r"\b(hf_|rpa_|[sr]k_live_|[sr]k_test_|sk-)[A-Za-z0-9_\-]{8,}",
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}",
    r"(?i)(authorization|cookie|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+",
    r"://(?<=[A-Za-z0-9+.\-]://)[^/\s:@]+:[^/\s@]+@",
    r"input_value=.*?(?=, input_type=|$)",
    r"^#{1,6}\s+\S",
    r"(?<=[.!?;:])\s+(?=\S)",
    r"\n[ \t]*\n+",
    r"[ \t\f\v]+",
    r"\n\s*\n\s*",
    r"^[a-z]{1,8}_[A-Za-z0-9]{1,40}$",
    r'"(?:content|text)":\s*"(?!")',
    r'"usage":\s*\{',
    r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$",
    r"^[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$",
    r"^[\x21-\x7e]{8,512}$",
    r"^[\w.:/@+-]{0,120}$",
    # RunPod's answers (not a caller's text), reviewed all the same.
    r"no (longer any )?instances? (are )?available|capacity|cannot be placed|out of stock"
    r"|not enough (free )?gpus|unavailable gpu",
    r"\b(t|reset)\s*=\s*(\d+(?:\.\d+)?)",
    r"\b(r|remaining)\s*=\s*(\d+)",
}
# Inline calls allowed, each on text no caller writes: module -> why.
INLINE = {
    "auxen/kb/store.py": "index names LanceDB reports for indexes Auxen built",
    "auxen/inference/providers/runpod_api.py": "RunPod's RateLimit header and pod ids",
    "auxen/store/tenant_role.py": "the operator's database name (a single character class)",
}
# Runs that make backtracking patterns quadratic: long words, words before "://",
# repeated prefixes, whitespace runs with no end, unterminated separators.
ADVERSARIAL = [
    "a" * N,
    "a://" * (N // 4),
    "://" + "a" * N,
    "a://" + "a:" * (N // 2),
    "auxk_" * (N // 5),
    "auxen_live_" * (N // 11),
    "sk-" * (N // 3),
    "bearer " * (N // 7),
    "authorization" + " " * N,
    "input_value=" * (N // 12),
    "\n" + " " * N,
    "\n" + " \n" * (N // 2) + "x",
    ". " * (N // 2),
    "." + " " * N,
    "#" * N,
    "a@" + "." * N,
    "a" * 64 + "@" + "a." * (N // 2),
    '"content":' + " " * N,
    '"usage":' * (N // 8),
    "t=" + "1" * N,
]


def _patterns() -> dict[str, re.Pattern[str] | re.Pattern[bytes]]:
    found: dict[str, re.Pattern[str] | re.Pattern[bytes]] = {}
    for info in pkgutil.walk_packages(auxen.__path__, "auxen."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            items = value if isinstance(value, list | tuple) else [value]
            for item in items:
                for part in item if isinstance(item, tuple) else (item,):
                    if isinstance(part, re.Pattern):
                        source = part.pattern
                        key = source.decode() if isinstance(source, bytes) else source
                        found[key] = part
    return found


def test_every_pattern_in_the_package_is_reviewed() -> None:
    found = _patterns()
    assert set(found) - REVIEWED == set(), "new patterns: review them and list them here"
    assert REVIEWED - set(found) == set(), "patterns listed here that no longer exist"


def test_inline_regex_calls_only_on_our_own_text() -> None:
    root = Path(auxen.__file__).parent
    inline = re.compile(r"\bre\.(?:sub|subn|search|match|fullmatch|split|findall|finditer)\(")
    users = {
        str(path.relative_to(root.parent))
        for path in root.rglob("*.py")
        if inline.search(path.read_text())
    }
    assert users == set(INLINE)


@pytest.mark.parametrize("source", sorted(REVIEWED))
def test_pattern_is_linear_on_adversarial_text(source: str) -> None:
    pattern = _patterns()[source]
    for text in ADVERSARIAL:
        subject: str | bytes = text.encode() if isinstance(pattern.pattern, bytes) else text
        matches = sum(1 for _ in pattern.finditer(subject))  # type: ignore[arg-type]
        assert matches >= 0
