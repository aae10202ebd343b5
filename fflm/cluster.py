"""Ray, where fflm uses it (the optional `ray` extra): joining or starting a cluster, and tasks
whose results come back in order. Training's workers are in fflm/distributed.py; `prepare
--ray` and `ngram train --ray` map their chunks here."""

import collections
import os
import socket

from .errors import FflmError


def ray_module():
    try:
        import ray
    except ImportError:
        raise FflmError("--ray needs Ray: pip install 'fflm[ray]'") from None
    return ray


def connect(address=None, num_cpus=None, ray_init=None):
    """Join the Ray cluster at `address` (host:port, auto), or start a local one (None or
    "local") with `num_cpus` (default: this machine's). Returns True when this call started or
    joined Ray (and `ray.shutdown()` is the caller's), False when Ray was running already."""
    import logging

    ray = ray_module()
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address in (None, "local"):  # a Ray of its own, even where `ray start` runs one on this machine
        options["address"] = "local"
        options["num_cpus"] = num_cpus or os.cpu_count() or 1
    else:
        check_reachable(address)  # ray.init would retry for minutes
        options["address"] = address
    options.update(ray_init or {})
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = "start a local Ray" if address in (None, "local") else f"reach the Ray cluster at {address}"
        raise FflmError(f"cannot {where}: {str(e).splitlines()[0]}") from None
    return True


def check_reachable(address, timeout=5.0):
    """A one-line error now for a host:port nothing answers on (Ray would keep retrying)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise FflmError(f"--ray {address}: not an address (host:port, or auto)") from None
    except OSError as e:
        raise FflmError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def map_ordered(fn, jobs, in_flight, address=None, arg=lambda job: job):
    """(job, fn(arg(job))) for every job, in order, computed by Ray tasks with at most
    `in_flight` of them running or done and not yet taken (so a long input is never read far
    ahead)."""
    ray = ray_module()
    started = connect(address)
    try:
        task = ray.remote(num_cpus=1)(fn)
        pending = collections.deque()
        for job in jobs:
            pending.append((job, task.remote(arg(job))))
            if len(pending) >= in_flight:
                job0, ref = pending.popleft()
                yield job0, ray.get(ref)
        while pending:
            job0, ref = pending.popleft()
            yield job0, ray.get(ref)
    finally:
        if started:
            ray.shutdown()
