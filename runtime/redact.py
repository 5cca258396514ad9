"""The one place that hides credentials in text the runtime shows or writes.

IP cameras are opened with the user and password in the URL (rtsp://admin:secret@10.0.0.5/front).
Logs, summaries and benchmark records of a vehicle are collected and shipped, so every message,
progress line, summary, JSON and record that names a source passes it through `redact` first.
"""
from __future__ import annotations

import re

# A URL's user-info: from "scheme://" to the last "@" before the next whitespace. Taking the
# last "@" also covers a password with a raw "@" or "/" in it, at the cost of hiding a path's
# "@" too; hiding too much is the safe side.
_USER_INFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)\S*@")


def redact(text) -> str:
    """`text` (str() of it) with the user-info of every URL in it shown as ***:
    rtsp://admin:secret@host/front -> rtsp://***@host/front."""
    return _USER_INFO.sub(r"\1***@", str(text))
