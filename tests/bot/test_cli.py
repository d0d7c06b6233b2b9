"""The ``imagine-bot`` command line: ``--config`` before or after the sub-command, on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import cli


def config_for(tmp_path: Path, name: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"database:\n  url: sqlite+aiosqlite:///{tmp_path / name}.db\n", encoding="utf-8")
    return config


@pytest.mark.parametrize("argv", [
    ["--config", "{config}", "db", "upgrade"],
    ["db", "upgrade", "--config", "{config}"],
    ["db", "--config", "{config}", "upgrade"],
])
def test_config_works_before_or_after_the_sub_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # a config.yaml here would be the fallback: there is none
    config = config_for(tmp_path, "chosen")
    assert cli.main([part.format(config=config) for part in argv]) == 0
    assert "database upgraded to" in capsys.readouterr().out
    assert (tmp_path / "chosen.db").is_file() and not (tmp_path / "data").exists()
    assert cli.main(["db", "current", "--config", str(config)]) == 0
    current = capsys.readouterr().out.strip()
    assert current and not current.startswith("base")


def test_the_innermost_config_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outer, inner = config_for(tmp_path, "outer"), config_for(tmp_path, "inner")
    assert cli.main(["--config", str(outer), "db", "upgrade", "--config", str(inner)]) == 0
    assert (tmp_path / "inner.db").is_file() and not (tmp_path / "outer.db").exists()


def test_each_sub_command_takes_config_and_defaults_stay() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["run", "--config", "a.yaml"]).config == "a.yaml"
    assert parser.parse_args(["--config", "a.yaml", "run"]).config == "a.yaml"
    assert parser.parse_args(["playground", "--port", "1", "--config", "b.yaml"]).config == "b.yaml"
    assert parser.parse_args(["db", "prune", "--older-than", "1d", "--config", "c.yaml"]).config == "c.yaml"
    assert parser.parse_args(["run"]).config is None  # run and db then read ./config.yaml if it exists
    assert parser.parse_args(["playground"]).config is None
