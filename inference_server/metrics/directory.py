"""The directory of metric files that gunicorn's workers share (prometheus-client's
multiprocess mode), and the master's part in keeping it right.

Each worker counts in files of its own (`counter_<pid>.db`, `histogram_<pid>.db`,
`gauge_livesum_<pid>.db`) in the directory named by `PROMETHEUS_MULTIPROC_DIR`, and a scrape
sums them (`scrape.py`). Over a long run:

- `python run.py` makes the directory fresh before gunicorn starts (`prepare`): nothing of a
  previous run is counted in this one, and every counter starts at zero, as Prometheus expects
  of a restarted target.
- A worker that ends (killed, crashed, restarted by gunicorn, stopped) is marked dead by the
  master from gunicorn's `child_exit` hook (`worker_exited`): a marker file `<pid>.dead`. The
  next scrape folds that worker's counters and histograms into one archive file per type and
  removes its live gauges (`scrape.fold_dead_workers`), so its counts are kept while the files
  a scrape reads stay the live workers' plus a fixed few, however often workers restart (the
  pile-up of dead workers' files that slows scrapes, prometheus/client_python #204, #275).

The master only writes that marker: it imports nothing but the standard library here, so the
workers it forks later import the metrics library (and every lock) after gevent patched them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"  # the library's own variable, read when it is imported
DEAD = ".dead"


def prepare(path: Path) -> None:
    """Make `path` an empty directory for this run's metric files (only its owner may read)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)


def worker_exited(pid: int) -> None:
    """Mark worker `pid` as dead (from gunicorn's `child_exit`; the master runs this)."""
    path = os.environ.get(ENV)
    if path:
        Path(path, f"{pid}{DEAD}").touch()
