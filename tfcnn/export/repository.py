"""Reading an export version without loading any converter: what a listing needs.

``tfcnn runs`` shows whether each run shipped and whether its latest version passed verify; it
must stay fast (no TensorFlow import), so the card reader lives here, apart from
:mod:`tfcnn.export.card`, which builds cards and needs the formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfcnn.errors import TfcnnError
from tfcnn.util import read_json, sha256_file, write_text

CARD_FILE = "model_card.json"
# The card lists every other file's sha256; its own sits beside it (sha256sum's format), so an
# edited card (e.g. a swapped artifact with its hash changed to match) is caught too.
CARD_HASH_FILE = CARD_FILE + ".sha256"


def read_card(version_dir: "Path | str") -> dict[str, Any] | None:
    """The model card of an export version, or None when the version is gone or its card is
    unreadable (a listing shows that as missing rather than stopping)."""
    path = Path(version_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = read_json(path)
    except TfcnnError:
        return None
    return card if isinstance(card, dict) else None


def write_card_hash(version_dir: "Path | str") -> Path:
    """Record the card's sha256 beside it (``sha256sum -c`` reads the file); called whenever the
    card is written (export, verify)."""
    vd = Path(version_dir)
    return write_text(vd / CARD_HASH_FILE, f"{sha256_file(vd / CARD_FILE)}  {CARD_FILE}\n")


def card_hash_problem(version_dir: "Path | str") -> str | None:
    """Why the card cannot be trusted (missing hash, or edited since tfcnn wrote it), or None."""
    vd = Path(version_dir)
    path = vd / CARD_HASH_FILE
    if not path.is_file():
        return f"{CARD_HASH_FILE} is missing (removed, or exported by a tfcnn without card hashes: export again)"
    recorded = path.read_text().split()[:1]
    if recorded != [sha256_file(vd / CARD_FILE)]:
        return f"{CARD_FILE} was edited after tfcnn wrote it (sha256 differs from {CARD_HASH_FILE})"
    return None
