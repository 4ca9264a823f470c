"""Starting (or joining) Ray for the stages that use it: supernet training on Ray
Train, search and fine-tuning sweeps on Ray Tune."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def ray_temp_dir(run_dir: Path) -> str:
    """Ray puts unix sockets under its temp dir, and socket paths are limited to 107
    bytes: use the run folder when its path is short, else a short one in /tmp."""
    wanted = (Path(run_dir) / "ray_tmp").resolve()
    if len(str(wanted)) <= 40:
        wanted.mkdir(parents=True, exist_ok=True)
        return str(wanted)
    return tempfile.mkdtemp(prefix="nasbert-ray-")


@contextlib.contextmanager
def ray_session(run_dir: Path, *, num_cpus: int | None = None, address: str | None = None,
                log_to_driver: bool = True) -> Iterator[None]:
    """Ray for the duration of the block: the running one if there is one, else a
    cluster at ``address``, else a local one with ``num_cpus`` (default: all) and its
    temporary files under the run folder; stopped afterwards if started here."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=num_cpus or os.cpu_count(), _temp_dir=ray_temp_dir(run_dir),
                     include_dashboard=False, log_to_driver=log_to_driver,
                     configure_logging=False)
        else:
            ray.init(address=address)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()
