"""Run a test's worker in N gloo processes (spawned), with a deadline and one retry when the
free port was taken in between. Shared by the tests of torch.distributed behaviour."""

import contextlib
import os
import socket
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(worker, world: int, *args, timeout_s: float = 90) -> None:
    """``worker(rank, world, port, *args)`` in ``world`` processes; raises with a child's
    traceback if one fails, TimeoutError past ``timeout_s``."""
    try:
        _run(worker, world, args, timeout_s)
    except mp.ProcessRaisedException as err:
        if "Address already in use" not in str(err):
            raise
        _run(worker, world, args, timeout_s)  # the port was taken in between: once more


def _run(worker, world: int, args: tuple, timeout_s: float) -> None:
    ctx = mp.start_processes(
        worker, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
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
