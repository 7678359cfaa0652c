"""Flow control shared by every connection meshlib reads from: stop reading at the high mark, resume at the low one.

A peer that sends faster than its consumer takes the bytes must not make the
process buffer without bound, and reading must resume before the buffer runs
dry. The sidecar's listener, its CONNECT tunnels and the HTTP/1.1 client all
use the same marks.
"""

from __future__ import annotations

from typing import Final

HIGH_WATER: Final = 256 * 1024
"""Stop reading the socket while this many bytes wait for the consumer."""
LOW_WATER: Final = 64 * 1024
"""Resume reading once no more than this many bytes wait."""
