"""Finding and running the code samples of README.md, docs/ and examples/: the engine of tests/test_docs.py.

The rules, as a writer of docs meets them:

* **Which blocks.** Every fenced block whose language is ``python``/``py``, ``yaml``/``yml``, ``bash``/``sh``/
  ``shell`` or ``console`` in README.md, docs/**/*.md and examples/**/*.md is a sample, and a test case with
  the id ``PAGE:LINE`` (the line of its opening fence). Blocks are found with markdown-it-py, a CommonMark
  parser, so fences inside list items, longer fences and tildes are read as a Markdown viewer reads them.
* **Markers.** HTML comments right above a block (nothing but other markers between) steer it:

  - ``<!-- docs-test: skip (REASON) -->``: not run; the reason is required and shows in pytest's skip list.
  - ``<!-- docs-test: file NAME -->``: the block is also the file NAME in the working directory of every
    later block of the same page (a ``mesh.yaml`` the next Python block loads, say). It is still checked
    as its language says.
  - ``<!-- docs-test: with COMMAND -->``: COMMAND runs in the background around the block, as a background
    line of a bash block does (e.g. ``with meshlib proxy --config mesh.yaml`` for a sidecar client).
  - ``<!-- docs-test: warns (REASON) -->``: a YAML block that shows ``meshlib validate``'s warnings on
    purpose; it must warn, and its warnings are reported as a ``DocsSampleWarning``.
  - ``<!-- docs-test: setup -->``: a bash block whose commands also run, first, in the directory of every
    later block of the same page (``meshlib ca init`` and ``issue`` make the certificates a config names).

  An unknown directive, a skip without a reason or a marker that stands above no block fails.
* **Where.** Each block runs in a fresh directory holding the files of the page's earlier ``file`` blocks
  and what its earlier ``setup`` blocks made (a YAML block is validated there too);
  blocks of examples/ pages run from the repository root instead, as their READMEs say. The demo's
  upstreams (``meshlib demo --serve``) serve 127.0.0.1:9081-9083 and :9090 for every Python and shell block,
  and ``meshlib`` is on PATH. Proxy variables are cleared: nothing leaves loopback.
* **yaml**: a whole mesh config, checked as ``meshlib validate`` checks it: it must print ``ok`` and no
  warning, since a reader copies it as it stands (unless marked ``warns``). A fragment of a config must be
  made whole or marked skip.
* **python**: a block that defines ``test_*`` functions is a pytest module and is run by pytest (all such
  blocks in one pytest process, each in a directory of its own, also on examples/ pages), and must pass
  with at least one test; any other block runs as a script with ``python``. Either way the block must
  stand alone: its own imports, no top-level ``await``. Line numbers in tracebacks are the page's.
* **bash**/**console** (``$ `` lines of console): each command line (``\\`` continuations joined) runs in
  its own ``bash -c`` with a timeout and must exit 0; curl runs with ``--fail`` (from a curlrc), so an
  HTTP error fails too. By rule, lines starting with ``pip install`` are not run (they would change the
  environment under the tests); a ``pip install`` chained to other commands is refused. A line ending in ``&``,
  or starting a server (``meshlib proxy``, ``uvicorn``, ``flask ... run``), runs in the background: the
  runner waits until its port accepts connections, runs the next lines, and stops it (SIGTERM) at the end
  of the block. ``meshlib demo --serve`` is the session's own copy: the runner checks it answers instead.

Fixed ports: besides the demo's, samples use the sidecar's defaults (15000, 15001, 15006) and the examples'
apps (8000, 8001); a port already taken when a sample needs it fails that sample, saying so.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from markdown_it import MarkdownIt

from meshlib import _cli

REPO = Path(__file__).resolve().parents[1]
DEMO_PORTS = (9081, 9082, 9083, 9090)  # meshlib demo --serve: reviews v1 ×2, reviews v2, ratings
LANGUAGES = {
    "python": "python",
    "py": "python",
    "yaml": "yaml",
    "yml": "yaml",
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "console": "console",
}
COMMAND_TIMEOUT = 30.0  # seconds for one shell line or one Python script
READY_TIMEOUT = 15.0  # seconds for a background server to accept connections
STOP_TIMEOUT = 10.0
PYTEST_TIMEOUT = 180.0  # the one pytest run of every test block

_MARKER = re.compile(r"<!--\s*docs-test:(?P<body>.*?)-->", re.DOTALL)
_SKIP = re.compile(r"^\((?P<reason>.*)\)$", re.DOTALL)
_CHAINS = {"&&", "||", ";", "|", "&"}
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "meshlib_sidecar"}
# curl's HTTP errors should fail a sample the way a non-zero exit does; --max-time keeps a hang short.
_CURLRC = "--fail\n--silent\n--show-error\n--max-time 10\n"


class DocsSampleWarning(UserWarning):
    """Something a sample printed that a reader should see but that does not fail it (validate's warnings)."""


class SampleError(Exception):
    """A sample did not run as written; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Marker:
    directive: str
    argument: str


@dataclass(frozen=True, slots=True)
class Block:
    page: str  # relative to the repository, with /
    line: int  # the opening fence's line, from 1
    info: str  # the fence's language word as written
    text: str
    markers: tuple[Marker, ...] = ()
    marker_errors: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def language(self) -> str | None:
        return LANGUAGES.get(self.info.lower())

    def marked(self, directive: str) -> list[str]:
        return [m.argument for m in self.markers if m.directive == directive]


@dataclass(frozen=True, slots=True)
class Page:
    path: str
    blocks: tuple[Block, ...]
    stray_markers: tuple[str, ...]  # markers that stand above no code block


def pages() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "examples").rglob("*.md"))]
    return [p for p in found if p.is_file()]


def _parse_marker(body: str) -> tuple[Marker | None, str | None]:
    directive, _, argument = body.strip().partition(" ")
    argument = argument.strip()
    if directive in ("skip", "warns"):
        match = _SKIP.match(argument)
        if match is None or not match["reason"].strip():
            return None, f"a {directive} marker needs a reason: <!-- docs-test: {directive} (why) -->"
        return Marker(directive, match["reason"].strip()), None
    if directive == "file":
        name = Path(argument)
        if not argument or name.is_absolute() or ".." in name.parts:
            return None, f"a file marker needs a relative file name, got {argument!r}"
        return Marker("file", argument), None
    if directive == "setup":
        if argument:
            return None, "a setup marker takes no argument: <!-- docs-test: setup -->"
        return Marker("setup", ""), None
    if directive == "with":
        if not argument:
            return None, "a with marker needs a command: <!-- docs-test: with meshlib proxy --config mesh.yaml -->"
        return Marker("with", argument), None
    return None, f"unknown docs-test directive {directive!r} (known: skip, file, with, warns, setup)"


def parse_page(path: Path, root: Path = REPO) -> Page:
    """The page's fenced blocks, each with the markers right above it."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    page = path.relative_to(root).as_posix()
    blocks: list[Block] = []
    stray: list[str] = []
    pending: list[tuple[int, str]] = []  # (line, marker body) since the last block
    for token in tokens:
        if token.type == "html_block" and (found := _MARKER.findall(token.content)):
            line = token.map[0] + 1 if token.map else 0
            pending.extend((line, body) for body in found)
            continue
        if token.type == "fence":
            markers: list[Marker] = []
            errors: list[str] = []
            for line, body in pending:
                marker, error = _parse_marker(body)
                if marker is not None:
                    markers.append(marker)
                if error is not None:
                    errors.append(f"{page}:{line}: {error}")
            pending.clear()
            assert token.map is not None  # block tokens always carry their lines
            language = token.info.split()[0] if token.info.strip() else ""  # "python title=x" is python
            blocks.append(Block(page, token.map[0] + 1, language, token.content, tuple(markers), tuple(errors)))
            continue
        if pending:
            stray.extend(
                f"{page}:{line}: a docs-test marker must stand right above a code block" for line, _ in pending
            )
            pending.clear()
    stray.extend(f"{page}:{line}: a docs-test marker at the end of the page marks nothing" for line, _ in pending)
    return Page(page, tuple(blocks), tuple(stray))


def all_pages() -> list[Page]:
    return [parse_page(path) for path in pages()]


def samples(parsed: Sequence[Page]) -> list[Block]:
    """The blocks that are test cases: those in a language the runner runs."""
    return [block for page in parsed for block in page.blocks if block.language is not None]


# --- where a block runs ----------------------------------------------------------------------------------------------


def runs_from_repo(block: Block) -> bool:
    """The examples' READMEs say "from the repository root"; their blocks run there."""
    return block.page.startswith("examples/")


def prepare_directory(page: Page, block: Block, directory: Path) -> Path:
    """Write the files of the page's ``file`` blocks above ``block`` into ``directory``; return the block's cwd."""
    if runs_from_repo(block):
        if any(b.marked("file") for b in page.blocks):
            raise SampleError(f"{block.id}: blocks of examples/ run from the repository root, where no file is written")
        return REPO
    directory.mkdir(parents=True, exist_ok=True)
    for earlier in page.blocks:
        if earlier.line >= block.line:
            break
        for name in earlier.marked("file"):
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(earlier.text, encoding="utf-8")
        if earlier.marked("setup"):
            env = sample_environment(directory.parent)
            for line in command_lines(earlier):
                done = run_command(["bash", "-c", line], cwd=directory, env=env, timeout=COMMAND_TIMEOUT, shown=line)
                if done.returncode != 0:
                    raise SampleError(f"{block.id}: the setup block {earlier.id} failed:\n{done.describe()}")
    return directory


def sample_environment(scratch: Path) -> dict[str, str]:
    """The environment of every sample: this Python's scripts first on PATH, no proxies, curl with --fail."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    curl_home = scratch / "curl-home"
    curl_home.mkdir(parents=True, exist_ok=True)
    (curl_home / ".curlrc").write_text(_CURLRC, encoding="utf-8")
    env["CURL_HOME"] = str(curl_home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # blocks of examples/ run in the repository
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


# --- processes -------------------------------------------------------------------------------------------------------


@dataclass
class Finished:
    command: str
    returncode: int | None  # None: killed after the timeout
    output: str

    def describe(self) -> str:
        status = "timed out" if self.returncode is None else f"exit {self.returncode}"
        return f"$ {self.command}\n({status})\n{self.output.rstrip()}"


def run_command(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float, shown: str) -> Finished:
    """Run to the end (killing its whole process group after ``timeout``); stdout and stderr together."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,  # its own group: a timeout also ends what it started
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Finished(shown, None, out)
    return Finished(shown, proc.returncode, out)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Background:
    """A server a sample starts: running until the end of the block."""

    command: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def words_of(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _option(words: Sequence[str], *names: str) -> str | None:
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def _is_demo_serve(words: Sequence[str]) -> bool:
    return words[:2] == ["meshlib", "demo"] and "--serve" in words


def _is_server(words: Sequence[str]) -> bool:
    if words[:2] == ["meshlib", "proxy"] or _is_demo_serve(words) or words[:1] == ["uvicorn"]:
        return True
    return words[:1] == ["flask"] and "run" in words


def _ready_port(words: Sequence[str], cwd: Path) -> int:
    """The port that accepts connections once the server ``words`` starts is ready."""
    if words[:2] == ["meshlib", "proxy"]:
        listen = _option(words, "--outbound")
        config = _option(words, "--config")
        if listen is None and config is not None and (cwd / config).is_file():
            data = yaml.safe_load((cwd / config).read_text(encoding="utf-8")) or {}
            listen = ((data.get("sidecar") or {}).get("outbound") or {}).get("listen")
        return int((listen or "127.0.0.1:15001").rsplit(":", 1)[1])
    port = _option(words, "--port", "-p")
    if port is not None:
        return int(port)
    if words[:1] == ["uvicorn"]:
        return 8000
    if words[:1] == ["flask"]:
        return 5000
    raise SampleError(
        f"the runner cannot tell when `{shlex.join(words)}` is ready: give it a --port, or mark the block"
    )


def start_background(
    words: Sequence[str], *, cwd: Path, env: Mapping[str, str], scratch: Path, index: int
) -> Background | None:
    """Start a server line and wait until it accepts connections; None for the session's own demo upstreams."""
    command = shlex.join(words)
    if _is_demo_serve(words):
        down = [port for port in DEMO_PORTS if not port_open(port)]
        if down:
            raise SampleError(f"`{command}`: the session's demo upstreams do not answer on {down}")
        return None
    port = _ready_port(words, cwd)
    if port_open(port):
        raise SampleError(f"`{command}` needs 127.0.0.1:{port}, which another process holds")
    log = scratch / f"background-{index}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    background = Background(command, proc, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            background.stop()
            state = f"exited {proc.returncode}" if proc.returncode is not None else "not ready in time"
            raise SampleError(f"`{command}` {state} (waited for port {port}):\n{background.output()}")
        time.sleep(0.05)
    return background


@contextlib.contextmanager
def backgrounds() -> Iterator[list[Background]]:
    running: list[Background] = []
    try:
        yield running
    finally:
        for background in reversed(running):
            background.stop()


# --- yaml ------------------------------------------------------------------------------------------------------------


@dataclass
class Validated:
    ok: bool
    out: str
    err: str
    warnings: list[str] = field(default_factory=list)


def validate_yaml(block: Block, cwd: Path) -> Validated:
    """``meshlib validate`` on the block, in process (the same function the command runs)."""
    names = block.marked("file")
    path = cwd / (names[-1] if names else f"block-{block.line}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        warnings.simplefilter("always")
        code = _cli.main(["validate", str(path)])
    found = [line for line in err.getvalue().splitlines() if line.lower().startswith("warning")]
    found += [f"warning: {w.message}" for w in caught]
    return Validated(code == 0, out.getvalue(), err.getvalue(), found)


# --- python ----------------------------------------------------------------------------------------------------------


def _aligned(block: Block) -> str:
    """The block's text, shifted down so that line N of the file is line N of the page."""
    return "\n" * block.line + block.text


def is_pytest_module(block: Block) -> bool:
    try:
        tree = ast.parse(block.text)
    except SyntaxError:
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_") for node in tree.body
    )


def check_syntax(block: Block) -> None:
    """Compile the block as Python does (the compiler, not the parser, refuses a top-level ``async with``)."""
    try:
        compile(_aligned(block), block.page, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SampleError(f"{block.page}:{exc.lineno}: {exc.msg}: {(exc.text or '').strip()}") from None


def module_name(block: Block) -> str:
    return "test_" + re.sub(r"\W", "_", block.page.removesuffix(".md")) + f"_L{block.line}"


def run_script(block: Block, cwd: Path, env: Mapping[str, str], scratch: Path) -> Finished:
    # Named after its page, so that a traceback reads "docs/in-process.md", line 12: the page's own line.
    script = scratch / "samples" / block.page
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_aligned(block), encoding="utf-8")
    return run_command(
        [sys.executable, str(script)], cwd=cwd, env=env, timeout=COMMAND_TIMEOUT, shown=f"python {block.id}"
    )


_PYTEST_CONFTEST = '''\
"""Written by tests/docs_samples.py: each sample runs in its own directory, holding its page's files."""

import pytest


@pytest.fixture(autouse=True)
def _sample_directory(request, monkeypatch):
    monkeypatch.chdir(request.path.parent)
'''


@dataclass
class PytestOutcome:
    passed: int
    problems: list[str]


def run_pytest_modules(
    modules: Sequence[tuple[Block, Path]], env: Mapping[str, str], root: Path
) -> tuple[dict[str, PytestOutcome], str]:
    """Run each (block, directory) as a pytest module in one pytest process; the outcome per block id."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(f"[pytest]\ntimeout = {int(COMMAND_TIMEOUT)}\n", encoding="utf-8")
    (root / "conftest.py").write_text(_PYTEST_CONFTEST, encoding="utf-8")
    for block, directory in modules:
        (directory / f"{module_name(block)}.py").write_text(_aligned(block), encoding="utf-8")
    report = root / "report.xml"
    finished = run_command(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}", str(root)],
        cwd=root,
        env=env,
        timeout=PYTEST_TIMEOUT,
        shown="pytest (every test block)",
    )
    outcomes = {block.id: PytestOutcome(0, []) for block, _ in modules}
    by_module = {module_name(block): block.id for block, _ in modules}
    cases = ET.parse(report).getroot().iter("testcase") if report.exists() else iter(())
    for case in cases:
        where = f"{case.get('classname', '')}.{case.get('name', '')}"
        block_id = next((bid for name, bid in by_module.items() if name in where.split(".")), None)
        if block_id is None:
            continue
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if problem is None:
            outcomes[block_id].passed += 1
        else:
            detail = (problem.text or problem.get("message") or "").strip()
            outcomes[block_id].problems.append(f"{case.get('name')}: {problem.tag}\n{detail}")
    return outcomes, finished.describe()


# --- shell -----------------------------------------------------------------------------------------------------------


def command_lines(block: Block) -> list[str]:
    """The block's commands: ``\\`` continuations joined, blank and comment-only lines dropped.

    In a ``console`` block only ``$ `` lines (and their continuations) are commands; the rest is output.
    """
    console = block.language == "console"
    commands: list[str] = []
    joined: str | None = None  # a command continued with a backslash
    for line in block.text.splitlines():
        if joined is None:
            if console and not line.startswith("$ "):
                continue  # output
            line = line[2:] if console else line
        else:
            line = joined + line
        if line.rstrip().endswith("\\"):
            joined = line.rstrip()[:-1] + " "
            continue
        joined = None
        if line.strip() and not line.strip().startswith("#"):
            commands.append(line.strip())
    if joined is not None and joined.strip():
        commands.append(joined.strip())
    return commands


def run_shell(block: Block, cwd: Path, env: Mapping[str, str], scratch: Path) -> list[str]:
    """Run the block's lines in order; returns what was not run by rule. Raises SampleError on a failure."""
    not_run: list[str] = []
    transcript: list[str] = []
    with backgrounds() as running:
        for index, line in enumerate(command_lines(block)):
            words = words_of(line)
            installs = "pip" in words and "install" in words
            if installs and (words[:2] != ["pip", "install"] or set(words) & _CHAINS):
                # Skipping the whole line would skip the commands chained to it unseen.
                raise SampleError(
                    f"{block.id}: `{line}`: put `pip install ...` on a line of its own, or mark the block"
                )
            if installs:
                not_run.append(line)
                continue
            background = bool(words) and words[-1] == "&"
            words = words[:-1] if background else words
            if background or _is_server(words):
                started = start_background(words, cwd=cwd, env=env, scratch=scratch, index=index)
                if started is not None:
                    running.append(started)
                transcript.append(f"$ {line}\n(in the background)")
                continue
            finished = run_command(["bash", "-c", line], cwd=cwd, env=env, timeout=COMMAND_TIMEOUT, shown=line)
            transcript.append(finished.describe())
            if finished.returncode != 0:
                logs = "".join(f"\n--- {b.command} (background) ---\n{b.output()}" for b in running)
                raise SampleError(f"{block.id}: a command failed:\n" + "\n".join(transcript) + logs)
        for server in running:
            if server.proc.poll() is not None:
                raise SampleError(f"{block.id}: `{server.command}` exited {server.proc.returncode}:\n{server.output()}")
    return not_run
