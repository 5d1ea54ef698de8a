"""HMAC-SHA256 signatures on outgoing notifications.

The sender signs `f"{timestamp}.".encode() + body` with the shared secret and sends
`X-Slotune-Id`, `X-Slotune-Timestamp` (unix seconds) and `X-Slotune-Signature: sha256=<hex>`.
A receiver recomputes the HMAC over the raw body it got, compares in constant time, and refuses a
timestamp older than its tolerance (a replayed request carries an old timestamp, and changing it
breaks the signature). `X-Slotune-Id` is stable across retries: drop a message whose id you saw.
"""

from __future__ import annotations

import hashlib
import hmac
import time

ID_HEADER = "X-Slotune-Id"
TIMESTAMP_HEADER = "X-Slotune-Timestamp"
SIGNATURE_HEADER = "X-Slotune-Signature"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def headers(message_id: str, secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    out = {"Content-Type": "application/json", ID_HEADER: message_id, TIMESTAMP_HEADER: str(ts)}
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, ts, body)
    return out


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, *,
           now: float | None = None, tolerance: float = DEFAULT_TOLERANCE_S) -> bool:
    """The receiver's check: a fresh timestamp (within `tolerance` seconds of now) and a matching
    signature. A missing or malformed header is False, never an exception."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)
