"""Which files under an output root this project wrote: only those are ever replaced or deleted."""

from __future__ import annotations

from ..retry import Retry
from ..storage import Location
from .card import is_our_card
from .layout import CARD_FILE, is_our_data_file, visible_files


def foreign_files(output: Location, retry: Retry) -> list[str]:
    """Visible files under the output root that sfp-label did not write (relative paths)."""
    ours_card = is_our_card(output, retry)
    return [
        path
        for path in visible_files(output, retry)
        if not is_our_data_file(path) and not (path == CARD_FILE and ours_card)
    ]
