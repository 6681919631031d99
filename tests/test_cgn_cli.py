"""The command line over SKDCGN configs: ``kdci-ray keys`` lists them, ``kdci-ray cgn`` is
``sweep`` for ``kind: skdcgn`` files (the same options, ``--only`` included). No Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdci_ray.cgn.config import CGN_SCHEMA
from kdci_ray.cli import build_parser, main
from kdci_ray.errors import ConfigError

SKDCGN_FILE = """kind: skdcgn
name: tiny_skdcgn
search:
  seed: [0, 1, 2]
"""


def _options(command: str) -> dict[str, tuple]:
    """Every option of a subcommand: its strings and what it does."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: (tuple(a.option_strings), a.nargs, a.default, a.help)
            for a in sub.choices[command]._actions if a.dest != "config"}


def test_keys_lists_every_kind_and_one_kind_alone(capsys) -> None:
    assert main(["keys"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    by_kind: dict[str, list[str]] = {}
    for kind, key in rows:
        by_kind.setdefault(kind, []).append(key)
    assert list(by_kind) == ["dfkd", "skdcgn"]  # the default kind first
    assert by_kind["skdcgn"] == CGN_SCHEMA.valid_keys()
    assert {"method", "train.lr", "kdci.enabled"} <= set(by_kind["dfkd"])
    for kind, keys in by_kind.items():
        assert main(["keys", "--kind", kind]) == 0
        assert capsys.readouterr().out.split() == keys
    with pytest.raises(SystemExit):
        main(["keys", "--kind", "cgn"])  # argparse names the choices


def test_cgn_takes_the_options_of_sweep() -> None:
    assert _options("cgn") == _options("sweep")
    assert "--only" in _options("cgn")["only"][0]


def test_cgn_only_selects_grid_points_before_ray(tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(SKDCGN_FILE)

    def no_ray() -> bool:
        raise ConfigError("stopped where Ray would start")

    monkeypatch.setattr("kdci_ray.engine.init_ray", no_ray)
    code = main(["cgn", str(config), "--only", "seed=1", "--only", "seed=2",
                 "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2 and "stopped where Ray would start" in err
    assert "--only seed=1|2: 2 of 3 grid points" in out

    code = main(["cgn", str(config), "--only", "student.widht=4",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown SKDCGN config key 'student.widht' in --only; did you mean " \
           "'student.width'?" in err
