"""``python -m examples.bookinfo [--mode in-process|sidecar]``: the bookinfo demo, from the repository root."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from examples.bookinfo.run import MODES, report_lines, run
from examples.bookinfo.servers import ServerError
from examples.bookinfo.sidecars import SidecarError

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bookinfo",
        description="Run the bookinfo example on loopback (frontend → reviews v1/v2 → ratings), send traffic, and "
        "print where it went, one trace and the key metrics.",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="in-process",
        help="in-process: each service's mesh inside it (default); sidecar: each service behind `meshlib proxy`",
    )
    parser.add_argument("--requests", type=int, default=200, help="requests to send to the frontend (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    args = parser.parse_args(argv)
    if args.requests < 20 or args.concurrency < 1:
        print("bookinfo: --requests must be at least 20 and --concurrency at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = run(args.mode, args.requests, args.concurrency, say=lambda line: print(line, flush=True))
    except (ServerError, SidecarError, OSError) as exc:  # a service or a sidecar did not start
        print(f"bookinfo: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    for line in report_lines(result):
        print(line)
    if not result.ok:
        failed = [check.text for check in result.checks if not check.ok]
        print(f"bookinfo: {len(failed)} check(s) failed: " + "; ".join(failed), file=sys.stderr)
        return EXIT_CHECK_FAILED
    print("all checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
