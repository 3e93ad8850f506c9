"""TOTP second factor (RFC 6238, via pyotp) and recovery codes.

Codes are checked against the current 30-second step and one step either side (clock
drift), compared in constant time, and the step that matched is returned so the caller
can refuse it forever after (a code is single use, even within its 30 seconds).
Recovery codes carry 80 random bits and are stored only as SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time

import pyotp
import qrcode
import qrcode.image.svg

ISSUER = "Auxen"
STEP_S = 30
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, the RFC 4226 recommendation


def provisioning_uri(secret: str, account: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code: paths only, no inline style, so it renders under
    the pages' strict Content-Security-Policy."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue().decode()


def looks_like_totp(code: str) -> bool:
    return len(code) == 6 and code.isascii() and code.isdigit()


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code equals `code` (within the drift window), or None."""
    code = code.strip().replace(" ", "")
    if not looks_like_totp(code):
        return None
    totp = pyotp.TOTP(secret, interval=STEP_S)
    current = int((time.time() if now is None else now) // STEP_S)
    found: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Every candidate is compared, so timing says nothing about which one matched.
        if hmac.compare_digest(totp.at(step * STEP_S), code):
            found = step
    return found


def new_recovery_codes() -> list[str]:
    """Codes like `k7fq-m2xd-9tph-w3ca`: 16 characters of a 31-letter alphabet (79 bits)."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def normalise_recovery_code(code: str) -> str:
    raw = "".join(c for c in code.lower() if c.isalnum())
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def recovery_hash(code: str) -> bytes:
    return hashlib.sha256(normalise_recovery_code(code).encode()).digest()
