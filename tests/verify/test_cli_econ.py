"""``splitup econ``: JSON for machines, a table for people, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from splitup.cli import main


def test_json_has_the_issue_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["econ", "--reward", "1", "--cost", "0.8", "--slash", "10", "--collusion", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["p_min"] == pytest.approx(0.8 / 9.9)
    assert out["nash"] is False  # the default p = 0.08 is just below p_min here
    assert out["honest_profit"] == pytest.approx(0.2)
    assert out["cheat_profit"] == pytest.approx(1 - 0.08 * 0.9 * 11)
    assert out["params"]["validators"] == 1


def test_validators_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["econ", "-R", "1", "-C", "0.8", "-S", "10", "-r", "0.1", "--validators", "2",
                 "--rate", "0.09", "--false-positive", "0.01", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["p_min"] == pytest.approx(0.8 / ((1 - 0.01) * 11 - 0.1))
    assert out["nash"] is True and out["honest_profit"] > out["cheat_profit"]
    assert out["lazy_validator_loses"] is True


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["econ", "--reward", "1", "--cost", "0.8", "--slash", "10"]) == 0
    text = capsys.readouterr().out
    assert "p_min" in text and "7.2727%" in text


def test_unreachable_p_min_is_null(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["econ", "-R", "1", "-C", "1", "-S", "1", "-r", "0.9", "-e", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["p_min"] is None and out["nash"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cost", "-1"], "error: cost must be >= 0"),
        (["--collusion", "1"], "error: collusion share must be in [0, 1)"),
        (["--slash", "0"], "error: slash must be > 0"),
        (["--validators", "0"], "error: validators must be an integer >= 1"),
        (["--rate", "nan"], "error: rate must be a finite number"),
        (["--cost", "abc"], "error: --cost must be a number, got 'abc'"),
        (["--validators", "1.5"], "error: --validators must be an integer, got '1.5'"),
        (["--validator-cost", "-3"], "error: validator cost must be >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--reward": "1", "--cost": "0.8", "--slash": "10"}
    argv = ["econ"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message)


def test_the_program_rule_at_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["econ", "--price", "20000000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # 0.02 SOL locks 0.1 SOL, all of it at risk; p (0.9)(0.12) > 0.02 from 18.52 %
    assert (out["collateral"], out["at_risk"], out["sound_rate_bps"]) == (100_000_000, 100_000_000, 1852)
    assert out["cheat_profit_at_floor"] < 0
    assert main(["econ", "--price", "20000000"]) == 0
    assert "18.52 %" in capsys.readouterr().out
    assert main(["econ", "--cost", "1"]) == 2  # the game needs R, C and S
