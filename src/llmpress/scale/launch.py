"""Data-parallel training: `llmpress tune|distill ... --processes N` on one machine, gloo on CPU.

The command re-runs itself as N ranks under `torch.distributed.run` (the launcher `accelerate launch`
uses for multi-process jobs; accelerate's own CPU path needs MPI) with every rendezvous address on
127.0.0.1 and gloo pinned to the loopback interface. Inside a rank, training goes through accelerate
(the HF Trainer is built on it; distillation calls `Accelerator.prepare`), which sees the launcher's
environment and wraps the model in DistributedDataParallel. `--batch-size` stays the GLOBAL batch: each
rank takes batch / N, so N processes and one process take optimizer steps of the same size.
Only rank 0 writes the artifact and the registry row.
"""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: list[str], processes: int, threads_per_process: int | None = None) -> int:
    """Run `llmpress <argv>` as `processes` ranks on this machine; returns the launcher's exit code."""
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ)
    env.update({CHILD_ENV: "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--local_addr=127.0.0.1",
           "--module", "llmpress.cli.main", *strip_option(argv, "--processes")]
    return subprocess.run(cmd, env=env).returncode
