"""One scrape: every worker's metric files read as one registry, in Prometheus text.

Under gunicorn (`PROMETHEUS_MULTIPROC_DIR` set, see `directory.py`) a scrape first folds the
files of the workers the master marked dead, then reads the rest with the library's
`MultiProcessCollector`, all under the directory's lock, so no scrape reads a file that another
is folding. A dead worker's counters and histograms are merged (the library's
`MultiProcessCollector.merge`, unaccumulated, as it documents for writing merged values back)
into `counter_archive.db` and `histogram_archive.db`, written whole to a temporary name and
renamed into place before the worker's own files are removed; its live gauges are removed with
the library's `mark_process_dead`. A marker whose process id is alive again (reused by a new
worker) waits for that worker's end.

In one process (tests, or an app embedded elsewhere) the library's default registry is read.
Either way the app's own collectors follow (`app.extensions["metrics"]`: the jobs by state).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector

from .directory import DEAD, ENV

ARCHIVED = ("counter", "histogram")  # the kinds of file whose counts outlive their worker
LOCK_TIMEOUT = 10.0


def text(collectors: Sequence[Collector] = ()) -> bytes:
    """Every metric of this server (all its workers) in the Prometheus text format, then those
    of `collectors` (read as the scrape happens: states kept in the stores, say)."""
    now = CollectorRegistry()
    for collector in collectors:
        now.register(collector)
    path = os.environ.get(ENV)
    if not path:
        return generate_latest(REGISTRY) + generate_latest(now)
    with FileLock(str(Path(path, "scrape.lock")), timeout=LOCK_TIMEOUT):
        fold_dead_workers(Path(path))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry) + generate_latest(now)


def fold_dead_workers(path: Path) -> list[int]:
    """Fold the files of every worker marked dead into the archives; the pids folded."""
    folded = []
    for marker in sorted(path.glob(f"*{DEAD}")):
        pid = int(marker.name.removesuffix(DEAD))
        if _alive(pid):
            continue
        for kind in ARCHIVED:
            dead = path / f"{kind}_{pid}.db"
            if dead.exists():
                _merge_into(path / f"{kind}_archive.db", dead)
                dead.unlink()
        multiprocess.mark_process_dead(pid, str(path))
        marker.unlink()
        folded.append(pid)
    return folded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the id
        return True
    return True


def _merge_into(archive: Path, dead: Path) -> None:
    sources = [str(archive), str(dead)] if archive.exists() else [str(dead)]
    merged = multiprocess.MultiProcessCollector.merge(sources, accumulate=False)
    temporary = archive.with_name(archive.name + ".new")  # not *.db: no scrape reads it
    temporary.unlink(missing_ok=True)
    out = MmapedDict(str(temporary))
    try:
        for metric in merged:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    metric.documentation,
                )
                out.write_value(key, sample.value, 0.0)
    finally:
        out.close()
    os.replace(temporary, archive)
