"""The numba cache is purged when any kernel source changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from midswarm.kernels._cache import purge_stale_cache


def test_purges_cached_code_when_a_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "a.f-1.py311.nbi").write_bytes(b"index")
    (cache / "a.f-1.py311.1.nbc").write_bytes(b"code")
    (cache / "a.cpython-311.pyc").write_bytes(b"bytecode")
    # No stamp yet: whatever is cached cannot be trusted.
    assert purge_stale_cache(tmp_path) is True
    assert sorted(p.name for p in cache.iterdir()) == [
        "a.cpython-311.pyc", "midswarm-kernels-sources.sha256"
    ]
    # Unchanged sources: cached code is kept.
    (cache / "a.f-1.py311.nbi").write_bytes(b"index")
    assert purge_stale_cache(tmp_path) is False
    assert (cache / "a.f-1.py311.nbi").exists()
    # A callee's module changes: every cached function goes.
    (tmp_path / "b.py").write_text("y = 3\n")
    assert purge_stale_cache(tmp_path) is True
    assert not (cache / "a.f-1.py311.nbi").exists()
    assert (cache / "a.cpython-311.pyc").exists()


def test_leaves_a_custom_cache_dir_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "elsewhere"))
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.f-1.py311.nbi").write_bytes(b"index")
    assert purge_stale_cache(tmp_path) is False
    assert (tmp_path / "__pycache__" / "a.f-1.py311.nbi").exists()
