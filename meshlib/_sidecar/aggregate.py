"""One ``/stats`` for a proxy of several workers: each worker's own document, merged.

With ``meshlib proxy --workers N`` every worker process has its own mesh (its
own counters, endpoint state and breakers); the admin listener, served by
worker 0, asks the others for their ``/stats`` and merges them so that the
admin endpoints describe the whole proxy, as Envoy's do for its worker threads:

* numbers add up (requests, requests in flight, connections, policy counters,
  times ejected);
* ``healthy`` holds when every worker sees the endpoint healthy, ``ejected``
  when any worker has it ejected;
* a breaker's ``state`` is the most severe one a worker reports
  (``open`` > ``half-open`` > ``closed``);
* anything else (addresses) is taken from the first worker that has it;
* ``observability``: counts add up (spans exported and dropped, log lines
  written); settings (``sampling``) and text are worker 0's.

Each worker's own document stays available under ``workers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

__all__ = ["merge_stats"]

_SEVERITY: Final = {"closed": 0, "half-open": 1, "open": 2}
# Numbers under ``observability`` that are settings, the same in every worker: not added up.
_SETTINGS: Final = frozenset({"sampling"})


def merge_stats(docs: Sequence[tuple[int, dict[str, Any]]], missing: Sequence[int] = ()) -> dict[str, Any]:
    """Merge ``(worker index, /stats document)`` pairs, worker 0's first; ``missing`` lists workers that did not answer.

    The result has the single-worker document's keys (``version`` is worker
    0's, ``clusters``, ``listeners``), plus ``workers``: each worker's own
    document with its index, and ``workers_missing`` when some did not answer.
    """
    if not docs:
        raise ValueError("merge_stats needs at least one worker's document")
    merged: dict[str, Any] = {"version": docs[0][1].get("version")}
    for part in ("clusters", "listeners", "observability"):
        combined: dict[str, Any] = {}
        for _, doc in docs:
            combined = _merge(combined, doc.get(part, {}), part)
        merged[part] = combined
    merged["workers"] = [{"worker": index, **doc} for index, doc in docs]
    if missing:
        merged["workers_missing"] = sorted(missing)
    return merged


def _merge(a: Any, b: Any, key: str) -> Any:
    """``b`` merged into ``a`` under the rules above (``key`` names the field, for the ones merged their own way)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, value in b.items():
            out[k] = _merge(out[k], value, k) if k in out else value
        return out
    if isinstance(a, bool) and isinstance(b, bool):  # before the numbers: a bool is an int
        return (a and b) if key == "healthy" else (a or b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a if key in _SETTINGS else a + b
    if key == "state" and isinstance(a, str) and isinstance(b, str):
        return a if _SEVERITY.get(a, 0) >= _SEVERITY.get(b, 0) else b
    return a
