"""The ``xds`` extra installs beside the base package's dependencies without downgrading any of them.

Resolves ``meshlib-http`` and ``meshlib-http[xds]`` from scratch (``pip install --dry-run --ignore-installed``)
and fails when a package both need resolves to another version with the extra: the extra's protos need a
current protobuf, and a dependency that pinned an old one would drag the resolution down (the
``opentelemetry-exporter-zipkin`` meta-package does: its proto half pins protobuf 3).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resolve(requirement: str) -> dict[str, str]:
    """Package name → version that pip would install for ``requirement`` into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        done = subprocess.run([*cmd, "--report", str(report), requirement], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"pip could not resolve {requirement}")
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def main() -> int:
    base = resolve(str(ROOT))
    with_xds = resolve(f"{ROOT}[xds]")
    changed = {name: (version, with_xds.get(name)) for name, version in base.items() if with_xds.get(name) != version}
    added = sorted(set(with_xds) - set(base))
    print(f"base: {len(base)} packages; with [xds]: {len(with_xds)}, adding {', '.join(added)}")
    if changed:
        for name, (before, after) in sorted(changed.items()):
            print(f"  {name}: {before} without the extra, {after} with it", file=sys.stderr)
        print("the xds extra changes the base package's dependencies", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
