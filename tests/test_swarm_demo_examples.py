"""The examples run and print what they promise."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_embed_trio_example(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("embed_trio.py", capsys)
    assert re.search(r"library: 868 patterns over shards \{.*: 434, .*: 434\}", out)
    forecasts = re.search(r"forecasts: (\d+) of 292 windows, direction hit-rate", out)
    assert forecasts is not None
    assert re.search(r"MLP: 20 steps, loss [\d.]+ -> [\d.]+", out)
    assert len(re.findall(r"influence \w+: 0\.\d{3}", out)) == 3


def test_asyncio_app_example(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_example("asyncio_app.py", capsys)
    assert "asyncio app: added 568 patterns" in out
    assert re.search(r"asyncio app: \d+ forecasts over 192 windows", out)
    tasks = re.search(r"swarm: (\d+) tasks, (\d+) verdicts", out)
    assert tasks is not None and int(tasks.group(1)) >= 192
