"""Keep numba's on-disk cache consistent with the kernel sources.

numba invalidates a cached function when *its own* source file changes, but
not when a function it calls, defined in another module, changes: the caller's
cached machine code still contains the old callee.  A partial update of these
sources (an editable install, a patched file) would then run stale code
silently.  :func:`purge_stale_cache` stamps the cache directory with a digest
of every source file of this package and deletes the cached machine code of
the package when the digest differs, so numba recompiles everything once.

Only numba's default cache location (``__pycache__`` next to the sources) is
managed; with ``NUMBA_CACHE_DIR`` set, keeping that directory consistent is
the caller's business.  Failures (read-only installs, races with another
process doing the same) are ignored: the worst case is a recompilation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["purge_stale_cache"]

_STAMP = "midswarm-kernels-sources.sha256"


def _digest(package_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(package_dir.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def purge_stale_cache(package_dir: Path | None = None) -> bool:
    """Delete this package's cached numba code if any source changed since it
    was cached.  Returns True when something was purged."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    here = package_dir or Path(__file__).resolve().parent
    cache_dir = here / "__pycache__"
    try:
        digest = _digest(here)
        stamp = cache_dir / _STAMP
        if stamp.exists() and stamp.read_text().strip() == digest:
            return False
        purged = False
        for entry in cache_dir.glob("*.nb[ic]"):
            entry.unlink(missing_ok=True)
            purged = True
        cache_dir.mkdir(exist_ok=True)
        tmp = cache_dir / f"{_STAMP}.{os.getpid()}"
        tmp.write_text(digest)
        os.replace(tmp, stamp)
        return purged
    except OSError:
        return False
