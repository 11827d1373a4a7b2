"""Data-parallel training: `llmpress tune|distill ... --processes N` on one machine, gloo on CPU.

The command re-runs itself as N rank processes. They meet through a file store in a temporary
directory (not a TCP store: torch's TCPStore listens on every interface, and nothing here may listen
beyond loopback), and gloo is pinned to the loopback interface. Inside a rank, training goes through
accelerate (the HF Trainer is built on it), which finds the process group initialised and wraps the
model in DistributedDataParallel. `--batch-size` stays the GLOBAL batch: each rank takes batch / N, so
N processes and one process take optimizer steps of the same size. Only rank 0 writes the artifact
and the registry row; a rank that fails stops the others.
"""

from __future__ import annotations

import os
import subprocess
import sys

from llmpress.errors import ConfigError

CHILD_ENV = "LLMPRESS_DDP_CHILD"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in a plain process and in rank 0 of a data-parallel run (the one that writes artifacts)."""
    return rank() == 0


def in_child() -> bool:
    """Already one rank of a launched run (ours or the user's own torchrun): do not launch again."""
    return bool(os.environ.get(CHILD_ENV) or os.environ.get("WORLD_SIZE"))


def per_process_batch(global_batch: int, processes: int) -> int:
    """Each rank's share of the global batch; it must divide evenly, so both runs take equal steps."""
    if processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {processes}", "pass --processes 2", param="processes")
    if global_batch % processes:
        raise ConfigError(f"the batch of {global_batch} does not split evenly over {processes} processes",
                          f"pass a batch size that is a multiple of {processes}", param="processes")
    return global_batch // processes


def strip_option(argv: list[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE` (the children must not launch again)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


STORE_ENV = "LLMPRESS_DDP_STORE"


def init_process_group() -> None:
    """In a launched rank: join the gloo group through the launcher's file store (no TCP listener)."""
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return
    store = os.environ.get(STORE_ENV)
    if not store:
        return  # launched by someone else's torchrun: accelerate uses its env:// rendezvous
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank(), world_size=world_size())


def launch(argv: list[str], processes: int, threads_per_process: int | None = None,
           timeout: float | None = None) -> int:
    """Run `llmpress <argv>` as `processes` ranks on this machine; 0 when every rank succeeded.

    Rank 0's output is the command's output; the other ranks' stdout is dropped and their stderr kept
    in a file, shown only if that rank fails while rank 0 did not."""
    import signal
    import tempfile
    import time

    threads = threads_per_process or max(1, (os.cpu_count() or 1) // processes)
    with tempfile.TemporaryDirectory(prefix="llmpress-ddp-") as tmp:
        base = dict(os.environ)
        base.update({CHILD_ENV: "1", STORE_ENV: os.path.join(tmp, "store"), "WORLD_SIZE": str(processes),
                     "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(threads),
                     "MKL_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
                     "TOKENIZERS_PARALLELISM": "false"})
        cmd = [sys.executable, "-m", "llmpress.cli.main", *strip_option(argv, "--processes")]
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        for r in range(processes):
            env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
            if r == 0:
                procs.append(subprocess.Popen(cmd, env=env))
            else:
                log = open(os.path.join(tmp, f"rank{r}.err"), "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                if failed or all(c == 0 for c in codes) or (deadline and time.monotonic() > deadline):
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(60)
            return 130
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            for log in logs:
                log.close()
        codes = [p.returncode for p in procs]
        if codes[0] == 0 and any(codes[1:]):
            r = next(i for i, c in enumerate(codes) if c)
            tail = open(os.path.join(tmp, f"rank{r}.err"), errors="replace").read()[-2000:]
            sys.stderr.write(f"data-parallel rank {r} failed (exit {codes[r]}):\n{tail}\n")
        return next((c for c in codes if c), 0)
