"""MkDocs hooks (mkdocs.yml ``hooks:``): the repository files the docs link to, in the site, with working links.

The pages of docs/ link to files outside it (the examples' READMEs and their configs, the benchmarks'
README), as they should on a code host, and those READMEs link on. The site takes every such file in,
at its path in the repository (``examples/fastapi_app/README.md`` is the page ``examples/fastapi_app/``),
as does a nav entry that names one; a link to a folder stands for its README.md. Every relative link is
read as a code host reads it, from the file's place in the repository, and pointed at the site's copy. A
link to a file that is not there is left as it is, so ``mkdocs build --strict`` reports it.

A README taken in only because a page links to it stays out of the nav (the nav lists the ones that
belong there); every other file is copied as it is.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.site_hooks")

DOCS = "docs"
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_LINK = re.compile(r"(?P<head>\]\()(?P<target>[^)\s]+)(?P<tail>(?:\s+\"[^\"]*\")?\))")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# The repository files taken into the site (their paths there are their paths in the repository).
_taken: set[str] = set()


def _outside_lines(markdown: str) -> Iterator[tuple[bool, str]]:
    """Each line of ``markdown`` (line ends kept), and whether it is outside fenced code."""
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            yield False, line
        elif opening:
            fence = opening.group(1)
            yield False, line
        else:
            yield True, line


def _targets(markdown: str) -> Iterator[str]:
    for outside, line in _outside_lines(markdown):
        if outside:
            yield from (m["target"] for m in _LINK.finditer(line))


def _resolve(target: str, repository_path: str) -> str | None:
    """The repository path a relative link written in ``repository_path`` names, or None for anything else."""
    if _SCHEME.match(target) or target.startswith(("#", "/")):
        return None
    path = target.partition("#")[0]
    if not path:
        return None
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(repository_path), path))
    return None if resolved.startswith("..") else resolved


def _repository_path(page_uri: str) -> str:
    return page_uri if page_uri in _taken else f"{DOCS}/{page_uri}"


def _site_path(repository_path: str) -> str | None:
    if repository_path.startswith(f"{DOCS}/"):
        return repository_path.removeprefix(f"{DOCS}/")
    for candidate in (repository_path, f"{repository_path}/README.md"):
        if candidate in _taken:
            return candidate
    return None


def site_target(target: str, page_uri: str) -> str:
    """``target``, a link written on the site's page ``page_uri``, as a link between the site's files."""
    repository_path = _repository_path(page_uri)
    resolved = _resolve(target, repository_path)
    if resolved is None:
        return target
    if resolved.startswith(f"{DOCS}/") and repository_path.startswith(f"{DOCS}/"):
        return target  # between pages of docs/: MkDocs reads it as written
    site_path = _site_path(resolved)
    if site_path is None:
        return target  # not in the site: MkDocs reports it
    _, hash_, anchor = target.partition("#")
    return posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".") + hash_ + anchor


def rewrite_links(markdown: str, page_uri: str) -> str:
    """Every inline link of ``markdown`` outside fenced code, through :func:`site_target`."""

    def rewrite(match: re.Match[str]) -> str:
        return match["head"] + site_target(match["target"], page_uri) + match["tail"]

    return "".join(_LINK.sub(rewrite, line) if outside else line for outside, line in _outside_lines(markdown))


def _nav_paths(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_paths(value)
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_paths(item)


def take_repository_files(root: Path, pages: Iterable[tuple[str, str]], wanted: Iterable[str]) -> set[str]:
    """The repository files the site needs: those ``wanted`` (nav entries) and those linked, transitively.

    ``pages`` are (repository path, Markdown) of the pages already in the site.
    """
    found: set[str] = set()
    queue = [*wanted]
    for repository_path, markdown in pages:
        queue += [r for t in _targets(markdown) if (r := _resolve(t, repository_path)) is not None]
    while queue:
        path = queue.pop()
        if path.startswith(f"{DOCS}/") or "/" not in path or path in found:
            continue  # docs/ is the site already; a top-level file would land among its pages
        if (root / path).is_dir() and (root / path / "README.md").is_file():
            path = f"{path}/README.md"
        if path in found or not (root / path).is_file():
            continue
        found.add(path)
        if path.endswith(".md"):
            text = (root / path).read_text(encoding="utf-8")
            queue += [r for t in _targets(text) if (r := _resolve(t, path)) is not None]
    return found


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent
    docs = {file.src_uri for file in files}
    in_nav = {path for path in _nav_paths(config.nav) if not _SCHEME.match(path)}
    pages = [
        (f"{DOCS}/{file.src_uri}", Path(file.abs_src_path).read_text(encoding="utf-8"))
        for file in files.documentation_pages()
        if file.abs_src_path is not None
    ]
    _taken.clear()
    _taken.update(take_repository_files(root, pages, (p for p in in_nav if p not in docs)))
    for path in sorted(_taken):
        inclusion = (
            InclusionLevel.NOT_IN_NAV if path.endswith(".md") and path not in in_nav else InclusionLevel.INCLUDED
        )
        files.append(File.generated(config, path, abs_src_path=str(root / path), inclusion=inclusion))
    return files


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files, **_: Any) -> str:
    return rewrite_links(markdown, page.file.src_uri)
