"""Every code sample in README.md, docs/ and examples/ runs, validates or executes as written.

One test case per fenced ``python``, ``yaml`` and ``bash`` block, with the id ``PAGE:LINE``; the rules (markers
such as ``<!-- docs-test: skip (reason) -->``, where blocks run, what counts as passing) are in
tests/docs_samples.py's docstring. The samples run against ``meshlib demo --serve``, started once for this
module, so 127.0.0.1:9081-9083 and :9090 must be free, as must the sidecar's 15000, 15001 and 15006 and the
examples' 8000 and 8001 for the samples that use them; a taken port fails the test that needs it, naming it.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import shlex
import subprocess
import sys
import threading
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_samples import (
    DEMO_PORTS,
    REPO,
    Block,
    DocsSampleWarning,
    PytestOutcome,
    SampleError,
    all_pages,
    backgrounds,
    check_syntax,
    command_lines,
    is_pytest_module,
    parse_page,
    port_open,
    prepare_directory,
    run_pytest_modules,
    run_script,
    run_shell,
    runs_from_repo,
    sample_environment,
    samples,
    start_background,
    validate_yaml,
    words_of,
)

PAGES = all_pages()
PAGE = {page.path: page for page in PAGES}
SAMPLES = samples(PAGES)


@pytest.fixture(scope="module")
def demo_upstreams() -> Iterator[None]:
    """``meshlib demo --serve``, the command the docs tell readers to run, for the whole module."""
    taken = [port for port in DEMO_PORTS if port_open(port)]
    if taken:
        pytest.fail(f"the docs samples need 127.0.0.1:{DEMO_PORTS} free for meshlib demo --serve; taken: {taken}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    assert proc.stdout is not None
    lines: list[str] = []
    killer = threading.Timer(15.0, proc.kill)  # readline blocks: a process that never gets ready is killed
    killer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving until"):
                break
    finally:
        killer.cancel()
    if not all(port_open(port) for port in DEMO_PORTS):
        proc.kill()
        pytest.fail("meshlib demo --serve did not start:\n" + "".join(lines) + proc.stdout.read())
    yield
    proc.terminate()
    proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def pytest_outcomes(
    demo_upstreams: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, PytestOutcome], str]:
    """Every block that is a pytest module, run by one pytest process (one process each would cost seconds)."""
    root = tmp_path_factory.mktemp("pytest-samples")
    modules: list[tuple[Block, Path]] = []
    for block in SAMPLES:
        if block.language != "python" or block.marked("skip") or block.marker_errors or not is_pytest_module(block):
            continue
        directory = root / f"L{len(modules)}"  # never the repository, even for a block of examples/
        directory.mkdir()
        if not runs_from_repo(block):
            prepare_directory(PAGE[block.page], block, directory)
        modules.append((block, directory))
    return run_pytest_modules(modules, sample_environment(root), root)


def _run_sample(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.language == "yaml":
        # In the page's directory (its files, and what its setup blocks made), since a config may name files.
        page = PAGE[block.page]
        cwd = tmp_path / "yaml" if runs_from_repo(block) else prepare_directory(page, block, tmp_path / "cwd")
        with contextlib.chdir(cwd):
            result = validate_yaml(block, cwd)
        if not result.ok:
            raise SampleError(f"{block.id}: meshlib validate refuses it:\n{result.err}{result.out}")
        if not block.marked("warns"):
            if result.warnings:
                raise SampleError(
                    f"{block.id}: meshlib validate warns (mark it `warns (why)` if that is the point):\n"
                    + "\n".join(result.warnings)
                )
            return
        if not result.warnings:
            raise SampleError(f"{block.id}: marked `warns`, but meshlib validate has no warning for it")
        for warning in result.warnings:
            warnings.warn(f"{block.id}: meshlib validate: {warning}", DocsSampleWarning, stacklevel=1)
        return

    request.getfixturevalue("demo_upstreams")
    cwd = prepare_directory(PAGE[block.page], block, tmp_path / "cwd")
    env = sample_environment(tmp_path)
    if block.language == "python":
        check_syntax(block)
        if is_pytest_module(block):
            if block.marked("with"):
                raise SampleError(f"{block.id}: a pytest block cannot have a `with` marker")
            outcomes, transcript = request.getfixturevalue("pytest_outcomes")
            outcome: PytestOutcome = outcomes[block.id]
            if outcome.problems or outcome.passed == 0:
                details = "\n\n".join(outcome.problems) or f"no test of the block ran:\n{transcript}"
                raise SampleError(f"{block.id}: as a pytest module:\n{details}")
            return
    with backgrounds() as running:
        for index, command in enumerate(block.marked("with")):
            started = start_background(words_of(command), cwd=cwd, env=env, scratch=tmp_path, index=index)
            if started is not None:
                running.append(started)
        if block.language == "python":
            finished = run_script(block, cwd, env, tmp_path)
            if finished.returncode != 0:
                logs = "".join(f"\n--- {b.command} (background) ---\n{b.output()}" for b in running)
                raise SampleError(f"{block.id}: the script failed:\n{finished.describe()}{logs}")
        else:
            run_shell(block, cwd, env, tmp_path)


@pytest.mark.filterwarnings("default::tests.docs_samples.DocsSampleWarning")
@pytest.mark.parametrize("block", SAMPLES, ids=[block.id for block in SAMPLES])
def test_sample_runs_as_written(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.marker_errors:
        pytest.fail("\n".join(block.marker_errors), pytrace=False)
    if reasons := block.marked("skip"):
        pytest.skip(f"{block.id}: {'; '.join(reasons)}")
    try:
        _run_sample(block, request, tmp_path)
    except SampleError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_every_marker_stands_above_a_block() -> None:
    assert [stray for page in PAGES for stray in page.stray_markers] == []


def test_the_parser_finds_every_fenced_sample() -> None:
    """A cruder count of opening fences agrees with the parser, so no sample escapes the test unseen."""
    opening = re.compile(r"^\s*(```|~~~)\s*(python|py|yaml|yml|bash|sh|shell|console)\s*$", re.MULTILINE)
    for page in PAGES:
        text = (REPO / page.path).read_text(encoding="utf-8")
        found = [b for b in page.blocks if b.language is not None]
        assert len(found) == len(opening.findall(text)), page.path
    assert {"README.md", "docs/resilience.md", "docs/testing.md", "examples/fastapi_app/README.md"} <= set(PAGE)
    assert len(SAMPLES) >= 20


# --- install lines ---------------------------------------------------------------------------------------------------

DISTRIBUTION = "meshlib-http"
_PIP_INSTALL = re.compile(r"pip install (?P<args>[^`\n]*)")
_SCANNED = ["README.md", "docs", "examples", "benchmarks", "meshlib", "noxfile.py", ".ci/run"]


def _scanned_files() -> Iterator[Path]:
    for name in _SCANNED:
        path = REPO / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.suffix in {".md", ".py", ".yaml", ".txt", ".cfg"})


def _requirement_name(arg: str) -> str:
    name = re.split(r"[\[<>=!~; ]", arg.strip("'\""), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_install_lines_name_the_distribution_and_real_extras() -> None:
    """``pip install meshlib`` installs an unrelated 3D library: every install line installs this checkout."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == DISTRIBUTION
    extras = set(pyproject["project"]["optional-dependencies"])
    wrong: list[str] = []
    for path in _scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in _PIP_INSTALL.finditer(line):
                where = f"{path.relative_to(REPO)}:{number}: {match.group(0).strip()}"
                try:
                    args = shlex.split(match["args"], comments=True)
                except ValueError:
                    args = match["args"].split()
                for arg in (a for a in args if not a.startswith("-")):
                    if arg in {"&&", "||", ";", "|"}:
                        break
                    if _requirement_name(arg) in {"meshlib", DISTRIBUTION}:
                        wrong.append(f"{where}  (from a clone: pip install . or '.[extra]')")
                    local = re.fullmatch(r"\.\[(?P<extras>[\w,-]+)\]", arg)
                    if local and not set(local["extras"].split(",")) <= extras:
                        wrong.append(f"{where}  (extras defined: {sorted(extras)})")
    assert wrong == []


def test_the_distribution_is_installed_under_its_name() -> None:
    import importlib.metadata

    import meshlib

    assert importlib.metadata.version(DISTRIBUTION) == meshlib.__version__
    entry_points = importlib.metadata.distribution(DISTRIBUTION).entry_points
    assert {(ep.group, ep.name) for ep in entry_points} >= {("console_scripts", "meshlib"), ("pytest11", "meshlib")}


# --- the runner fails on broken samples ------------------------------------------------------------------------------


def _page(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return list(parse_page(path, root=tmp_path).blocks)


def test_runner_refuses_an_invalid_config(tmp_path: Path) -> None:
    (block,) = _page(tmp_path, "```yaml\nroutes:\n  - cluster: reviews-shadow\n```\n")
    result = validate_yaml(block, tmp_path)
    assert not result.ok
    assert "routes[0].cluster: unknown cluster 'reviews-shadow'" in result.err


def test_runner_sees_the_warnings_of_meshlib_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``meshlib validate`` prints on stderr as ``warning: ...`` (exit 0) comes back as the block's warnings."""

    def validate(argv: list[str]) -> int:
        print("ok")
        print("warning: routes[0].mirror.cluster: not defined", file=sys.stderr)
        return 0

    monkeypatch.setattr("meshlib._cli.main", validate)
    (block,) = _page(tmp_path, "```yaml\nservice: a\n```\n")
    result = validate_yaml(block, tmp_path)
    assert result.ok
    assert result.warnings == ["warning: routes[0].mirror.cluster: not defined"]


def test_runner_refuses_top_level_async_with(tmp_path: Path) -> None:
    (block,) = _page(tmp_path, "text\n\n```python\nasync with x() as y:\n    pass\n```\n")
    with pytest.raises(SampleError, match=r"page\.md:4: 'async with' outside async function"):
        check_syntax(block)


def test_runner_fails_a_script_that_needs_an_earlier_block(tmp_path: Path) -> None:
    _, second = _page(tmp_path, "```python\nimport httpx\n```\n\n```python\nhttpx.Response(200)\n```\n")
    finished = run_script(second, tmp_path, sample_environment(tmp_path), tmp_path)
    assert finished.returncode == 1
    assert 'page.md", line 6' in finished.output  # the page's line, not the block's
    assert "NameError: name 'httpx' is not defined" in finished.output


def test_runner_writes_files_of_earlier_blocks_only(tmp_path: Path) -> None:
    page_path = tmp_path / "page.md"
    page_path.write_text(
        "```bash\ncat mesh.yaml\n```\n\n<!-- docs-test: file mesh.yaml -->\n```yaml\nservice: a\n```\n\n"
        "```bash\ncat mesh.yaml\n```\n",
        encoding="utf-8",
    )
    page = parse_page(page_path, root=tmp_path)
    before, config, after = page.blocks
    assert config.marked("file") == ["mesh.yaml"]
    env = sample_environment(tmp_path)
    with pytest.raises(SampleError, match="No such file"):
        run_shell(before, prepare_directory(page, before, tmp_path / "a"), env, tmp_path)
    assert run_shell(after, prepare_directory(page, after, tmp_path / "b"), env, tmp_path) == []


def test_setup_blocks_run_again_before_every_later_block(tmp_path: Path) -> None:
    page_path = tmp_path / "page.md"
    page_path.write_text(
        "```bash\ntest -f out/made.txt\n```\n\n<!-- docs-test: setup -->\n"
        "```bash\nmkdir -p out && touch out/made.txt\n```\n\n```bash\ntest -f out/made.txt\n```\n",
        encoding="utf-8",
    )
    page = parse_page(page_path, root=tmp_path)
    before, setup, after = page.blocks
    assert setup.marked("setup") == [""]
    env = sample_environment(tmp_path)
    with pytest.raises(SampleError, match="a command failed"):
        run_shell(before, prepare_directory(page, before, tmp_path / "a"), env, tmp_path)
    assert run_shell(after, prepare_directory(page, after, tmp_path / "b"), env, tmp_path) == []


def test_runner_fails_a_failing_command_and_skips_pip_install_by_rule(tmp_path: Path) -> None:
    ok, failing = _page(tmp_path, "```bash\npip install nothing-at-all\ntrue\n```\n\n```sh\ntrue\nfalse  # no\n```\n")
    env = sample_environment(tmp_path)
    assert run_shell(ok, tmp_path, env, tmp_path) == ["pip install nothing-at-all"]
    with pytest.raises(SampleError, match=r"(?s)page\.md:6: a command failed.*\$ false  # no\n\(exit 1\)"):
        run_shell(failing, tmp_path, env, tmp_path)


def test_runner_reads_commands_of_bash_and_console_blocks(tmp_path: Path) -> None:
    bash, console = _page(
        tmp_path,
        "```bash\n# a comment\necho a \\\n  b   # joined\n\ntrue\n```\n\n"
        "```console\n$ echo a \\\n  b\na b\n$ true\n```\n",
    )
    assert command_lines(bash) == ["echo a    b   # joined", "true"]
    assert command_lines(console) == ["echo a    b", "true"]
    assert run_shell(console, tmp_path, sample_environment(tmp_path), tmp_path) == []


def test_runner_refuses_to_skip_commands_chained_to_pip_install(tmp_path: Path) -> None:
    (block,) = _page(tmp_path, "```bash\npip install . && meshlib demo\n```\n")
    with pytest.raises(SampleError, match=r"put `pip install \.\.\.` on a line of its own"):
        run_shell(block, tmp_path, sample_environment(tmp_path), tmp_path)


def test_markers_need_a_reason_and_a_block(tmp_path: Path) -> None:
    text = (
        "<!-- docs-test: skip () -->\n```python\npass\n```\n\n"
        "<!-- docs-test: skip -->\n```python\npass\n```\n\n"
        "<!-- docs-test: skipp (typo) -->\n```python\npass\n```\n\n"
        "<!-- docs-test: skip (needs a GPU) -->\n\nA paragraph.\n\n```python\npass\n```\n"
    )
    (tmp_path / "page.md").write_text(text, encoding="utf-8")
    page = parse_page(tmp_path / "page.md", root=tmp_path)
    empty, missing, typo, unmarked = page.blocks
    assert "needs a reason" in empty.marker_errors[0]
    assert "needs a reason" in missing.marker_errors[0]
    assert "unknown docs-test directive 'skipp'" in typo.marker_errors[0]
    assert unmarked.markers == ()
    assert page.stray_markers == ("page.md:16: a docs-test marker must stand right above a code block",)


def test_curl_fails_on_an_http_error(tmp_path: Path) -> None:
    """curl exits 0 on a 503 by itself; under the runner it fails, so a sample that gets an error fails."""

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(503)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            (block,) = _page(tmp_path, f"```bash\ncurl http://127.0.0.1:{server.server_port}/\n```\n")
            with pytest.raises(SampleError, match=r"error: 503|returned error: 503"):
                run_shell(block, tmp_path, sample_environment(tmp_path), tmp_path)
        finally:
            server.shutdown()


def test_runner_refuses_a_background_command_it_cannot_wait_for(tmp_path: Path) -> None:
    (block,) = _page(tmp_path, "```bash\npython -m http.server 18765 &\ncurl http://127.0.0.1:18765/\n```\n")
    with pytest.raises(SampleError, match=r"cannot tell when `python -m http.server 18765` is ready"):
        run_shell(block, tmp_path, sample_environment(tmp_path), tmp_path)
