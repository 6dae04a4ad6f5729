"""Run a test's worker in N gloo processes (spawned), with a deadline and one retry when the
free port was taken in between. Shared by the tests of torch.distributed behaviour."""

import contextlib
import faulthandler
import os
import socket
import sys
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(worker, world: int, *args, timeout_s: float = 90, finished=None) -> None:
    """``worker(rank, world, port, *args)`` in ``world`` processes; raises with a child's
    traceback if one fails, TimeoutError past ``timeout_s``. ``finished()``, when given, says
    whether the workers' results are all written: past the deadline with it true, the
    processes that have not exited are ended and reported on stderr instead."""
    try:
        _run(worker, world, args, timeout_s, finished)
    except mp.ProcessRaisedException as err:
        if "Address already in use" not in str(err):
            raise
        _run(worker, world, args, timeout_s, finished)  # the port was taken in between: again


def _child(rank: int, worker, dump_after_s: float, *args) -> None:
    """A spawned child: runs the worker, prints every thread's stack to stderr if it is still
    running at ``dump_after_s``, and exits at once when it returns, skipping the interpreter's
    teardown (nothing the parent checks depends on it)."""
    faulthandler.dump_traceback_later(dump_after_s, exit=False)
    worker(rank, *args)
    faulthandler.cancel_dump_traceback_later()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(worker, world: int, args: tuple, timeout_s: float, finished) -> None:
    ctx = mp.start_processes(
        _child,
        args=(worker, timeout_s / 2, world, free_port(), *args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                if finished is not None and finished():
                    alive = sum(p.is_alive() for p in ctx.processes)
                    print(
                        f"{alive} of {world} gloo processes wrote their results but did not "
                        f"exit in {timeout_s} s; ended",
                        file=sys.stderr,
                    )
                    return
                raise TimeoutError(f"the {world} gloo processes did not finish in {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int, timeout_s: float = 90):
    """Inside a worker: the default process group (gloo on 127.0.0.1:port), destroyed on exit."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
