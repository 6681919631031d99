"""The one shape of a refused input, through the real command line: exit code 2, exactly one
``kdci-ray: error:`` line holding every expected fragment, no traceback, no output directory."""

from __future__ import annotations

from pathlib import Path

from kdci_ray.cli import main


def assert_refused(capsys, argv: list[str], expected: list[str], out: Path | None = None) -> str:
    """Run ``kdci-ray ARGV``; check the refusal's shape and ``expected``; return stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("kdci-ray: error: ") and err.count("error:") == 1, err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err
    if out is not None:
        assert not out.exists()
    return err
