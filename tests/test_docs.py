"""The docs stay true: README.md and docs/**.md are checked against the code.

- every ``kdci-ray ...`` command in a fenced code block parses with the real argument parser
  (``kdci_ray.cli.build_parser``; synopsis brackets and ``...`` are dropped first), and the config
  keys its overrides and ``--only`` filters name exist;
- every config key the docs name exists in the schema of one of the experiment kinds: an inline
  code span that is a key (```train.lr```, ```kdci.k: 16```, ```--only kdci.enabled=true```,
  ```retrain.*```), and every key of a ```yaml`` block (an experiment file: dotted, nested one
  level, ``search`` and its ``cases``);
- every repository path in an inline code span (``kdci_ray/...``, ``tests/...``, ``tools/...``,
  ``tune_configs/...``, ``benchmarks/...``, ``docs/...``, or one inside the package written from
  its subpackage, ``cgn/data.py``) and every relative Markdown link exists;
- ``docs/keys.md`` equals a fresh ``tools/docs_keys.py`` generation, every page is in
  ``mkdocs.yml``'s nav, and the README stays a front page (about 200 lines).

The checks are functions of the text and of the valid keys, so a synthetic page shows that a
renamed key is caught.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
KEYS_MD = ROOT / "docs" / "keys.md"
REPO_DIRS = ("kdci_ray", "tests", "tools", "tune_configs", "benchmarks", "docs")
FILE_SUFFIXES = {"py", "pt", "pth", "yaml", "yml", "json", "jsonl", "md", "csv", "png", "txt",
                 "npy", "npz", "jpg", "toml", "lock", "pkl"}
PLACEHOLDER_KEYS = {"key", "KEY", "section.key"}
PLACEHOLDER_VALUES = {"N": "1"}  # a synopsis's number (--workers N)
# retired keys the docs name on purpose (to say they are refused with the new name)
RETIRED_ON_PURPOSE = {"dafl.ie", "cmi.cr", "composition.rotation"}
# top-level keys of a Ray cluster launcher file: such a YAML block is not an experiment
CLUSTER_FILE_KEYS = {"cluster_name", "provider", "available_node_types", "head_node_type"}
FENCE = re.compile(r"^[ \t]*(```|~~~)([\w-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(`+)(.+?)\1")
KEY_SPAN = re.compile(r"^(?:--only\s+)?([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)(?:\s*[:=].*)?$")
SECTION_GLOB = re.compile(r"^([a-z][a-z0-9_]*)\.\*$")
PATH_SPAN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*/[A-Za-z0-9_.\-/]*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SHELL_BREAKS = {"&&", "||", "|", ";", "&"}


def _docs_keys_tool():
    spec = importlib.util.spec_from_file_location("docs_keys_tool", ROOT / "tools" / "docs_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Keys:
    """What the schemas of both experiment kinds accept (or a synthetic set, for the tests)."""

    def __init__(self, keys: Iterable[str], sections: Iterable[str], top_level: Iterable[str]):
        self.keys, self.sections = set(keys), set(sections)
        self.top_level = set(top_level) | {"kind", "search"}

    @classmethod
    def from_schemas(cls) -> Keys:
        tool = _docs_keys_tool()
        keys: set[str] = set(RETIRED_ON_PURPOSE)
        sections: set[str] = set()
        top: set[str] = set()
        for kind, _, _ in tool.KINDS:
            schema = tool.schema_of(kind)
            keys |= set(schema.valid_keys())
            sections |= set(schema.sections) | set(schema.extra_sections())
            top |= set(schema.top_level)
            assert RETIRED_ON_PURPOSE.isdisjoint(schema.valid_keys())
        retired = set().union(*(tool.schema_of(k).renamed for k, _, _ in tool.KINDS))
        assert RETIRED_ON_PURPOSE <= retired, "a key the docs call retired is not refused"
        return cls(keys, sections, top)

    def problem(self, key: str) -> str | None:
        if key in PLACEHOLDER_KEYS or key in self.keys or key in self.top_level:
            return None
        return f"unknown config key '{key}'"


@pytest.fixture(scope="module")
def schema_keys() -> Keys:
    return Keys.from_schemas()


# ----------------------------------------------------------------------------- text


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced code block."""
    return [(m.group(2).lower(), m.group(3)) for m in FENCE.finditer(text)]


def inline_spans(text: str) -> Iterator[str]:
    """The inline code spans outside fenced blocks."""
    for line in FENCE.sub("", text).splitlines():
        for m in INLINE.finditer(line):
            yield m.group(2).strip()


def commands(text: str) -> list[list[str]]:
    """The argument lists of every ``kdci-ray`` command in the fenced blocks (synopsis brackets
    and ``...`` dropped, ``N`` read as a number, a trailing ``# comment`` removed)."""
    found = []
    for _, body in fenced_blocks(text):
        for line in body.replace("\\\n", " ").splitlines():
            if "kdci-ray" not in line:
                continue
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word != "kdci-ray":
                    continue
                argv = []
                for w in words[i + 1:]:
                    if w in SHELL_BREAKS or w.startswith(">"):
                        break
                    w = w.lstrip("[").rstrip("]")
                    if w and w != "...":
                        argv.append(PLACEHOLDER_VALUES.get(w, w))
                found.append(argv)
    return found


def command_problems(argv: list[str], keys: Keys) -> list[str]:
    """Why ``kdci-ray ARGV`` would not parse, or which config keys it names do not exist."""
    from kdci_ray.cli import build_parser, parse_args
    from kdci_ray.errors import ConfigError

    shown = "kdci-ray " + shlex.join(argv)
    try:
        args = parse_args(build_parser(), argv)
    except SystemExit:
        return [f"{shown}: does not parse"]
    except ConfigError as exc:
        return [f"{shown}: {exc}"]
    named = [w.partition("=")[0] for w in getattr(args, "overrides", [])]
    named += [w.partition("=")[0] for w in getattr(args, "only", None) or []
              if not w.startswith("cases.")]
    return [f"{shown}: {p}" for p in map(keys.problem, named) if p]


def span_key(span: str, keys: Keys) -> str | None:
    """The config key an inline span names, or None when it names none."""
    m = KEY_SPAN.match(span)
    if m and m.group(1) in keys.sections and m.group(2) not in FILE_SUFFIXES:
        return f"{m.group(1)}.{m.group(2)}"
    return None


def yaml_keys(body: str, keys: Keys) -> list[str]:
    """Every key of an experiment YAML block (dotted, nested, ``search`` and its cases)."""
    data = yaml.safe_load(body)
    if not isinstance(data, dict) or CLUSTER_FILE_KEYS & set(data):
        return []
    out: list[str] = []

    def mapping(values: dict) -> None:
        for key, value in values.items():
            if key in keys.sections and isinstance(value, dict):
                out.extend(f"{key}.{sub}" for sub in value)
            else:
                out.append(str(key))

    search = data.pop("search", None) or {}
    mapping(data)
    cases = search.pop("cases", None) if isinstance(search, dict) else None
    if isinstance(search, dict):
        mapping(search)
    groups = cases.values() if isinstance(cases, dict) else [cases or []]
    for group in groups:
        for case in group:
            mapping({k: v for k, v in case.items() if k != "name"})
    return out


def key_problems(text: str, keys: Keys) -> list[str]:
    """Every config key the text names that the schemas do not hold."""
    problems = []
    for span in inline_spans(text):
        glob = SECTION_GLOB.match(span)
        retired = {k.partition(".")[0] for k in RETIRED_ON_PURPOSE}
        if glob and glob.group(1) not in keys.sections | retired:
            problems.append(f"`{span}`: no config section '{glob.group(1)}'")
        key = span_key(span, keys)
        if key and keys.problem(key):
            problems.append(f"`{span}`: {keys.problem(key)}")
    for lang, body in fenced_blocks(text):
        if lang in ("yaml", "yml"):
            problems += [f"yaml block: {p}" for p in map(keys.problem, yaml_keys(body, keys)) if p]
    for argv in commands(text):
        problems += command_problems(argv, keys)
    return problems


def path_problems(text: str, page: Path) -> list[str]:
    """Repository paths in inline spans and relative links that do not exist."""
    problems = []
    for span in inline_spans(text):
        if not PATH_SPAN.match(span):
            continue
        path = span.rstrip("/")
        top = path.split("/")[0]
        if top in REPO_DIRS:
            candidates = [ROOT / path]
        elif top != "results" and (ROOT / "kdci_ray" / top).is_dir() and (
                "." in path.rsplit("/", 1)[-1] or span.endswith("/")):
            # `cgn/data.py`, `kdci/` (results/ is where sweeps write; `kdci/scale` is a
            # TensorBoard tag, not a file)
            candidates = [ROOT / "kdci_ray" / path]
        else:
            continue
        if not any(c.exists() for c in candidates):
            problems.append(f"`{span}`: no such file in the repository")
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            problems.append(f"link ({target}): no such file")
    return problems


# ----------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("page", [p for p in PAGES if p != KEYS_MD],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_key_in_the_docs_exists(page: Path, schema_keys: Keys) -> None:
    """(``docs/keys.md`` is the schemas' own listing, retired keys included: it is checked by
    being regenerated, below.)"""
    assert key_problems(page.read_text(), schema_keys) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_named_in_the_docs_exists(page: Path) -> None:
    assert path_problems(page.read_text(), page) == []


def test_the_docs_show_commands_keys_and_paths() -> None:
    """The checks above have something to check (a change to the patterns cannot empty them)."""
    text = "\n".join(p.read_text() for p in PAGES)
    keys = Keys.from_schemas()
    assert len(commands(text)) >= 20
    assert sum(span_key(s, keys) is not None for s in inline_spans(text)) >= 100
    assert sum(bool(PATH_SPAN.match(s)) for s in inline_spans(text)) >= 30


def test_the_key_reference_is_current() -> None:
    tool = _docs_keys_tool()
    assert tool.choices_of(tool.schema_of("dfkd")), "the distillation CHOICES were not found"
    assert KEYS_MD.read_text() == tool.render(), \
        "docs/keys.md is stale: run python tools/docs_keys.py --write"


def test_every_page_is_in_the_mkdocs_nav() -> None:
    def files(nav) -> Iterator[str]:
        for entry in nav:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                yield from files(value) if isinstance(value, list) else [value]

    nav = set(files(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert nav == pages


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 210


# ----------------------------------------------------------------------------- the checks


SYNTHETIC = """Set `train.lr` to 0.05, or `kdci.k: 16`;
`student.pt` is a file, `ray.init` not a key.

```yaml
train:
  lr: 0.1
search:
  kdci.enabled: [false, true]
  cases:
    - {name: a, train.lr: 0.2}
```

```bash
kdci-ray sweep tune_configs/quickstart.yaml train.lr=0.2 --only kdci.enabled=true  # a comment
```
"""


def test_a_renamed_key_is_caught_in_every_form(schema_keys: Keys) -> None:
    assert key_problems(SYNTHETIC, schema_keys) == []
    renamed = Keys(schema_keys.keys - {"train.lr"} | {"train.learning_rate"},
                   schema_keys.sections, schema_keys.top_level)
    problems = key_problems(SYNTHETIC, renamed)
    assert len([p for p in problems if "train.lr" in p]) == 4, problems  # span, yaml x2, command
    assert all("'train.lr'" in p for p in problems)


def test_a_command_that_does_not_parse_is_caught(schema_keys: Keys) -> None:
    text = "```\nkdci-ray sweep CONFIG --no-such-option\nkdci-ray swep CONFIG\n" \
           "kdci-ray sweep CONFIG [--smoke] [key=value ...]\n```\n"
    problems = key_problems(text, schema_keys)
    assert len(problems) == 2 and all("does not parse" in p for p in problems)


def test_a_missing_path_or_link_is_caught() -> None:
    text = "`kdci_ray/train/no_such.py`, `methods/no_such.py`, `tune_configs/quickstart.yaml`, " \
           "`results/x/`, [a](no_such.md), [b](https://example.org)"
    problems = path_problems(text, ROOT / "docs" / "x.md")
    assert len(problems) == 3 and "quickstart" not in " ".join(problems)
