"""Work over many users split between processes, with the results gathered in the callers' order.

Ranking every test user by beam search, generating sessions for IPA mining: each user is independent, so each
process takes a contiguous share of the rows and every process gets back the results of all rows, in row order. With
one process (a plain ``python`` run) this is a plain loop; under ``torchrun --nproc_per_node N`` (CPUs or GPUs) or
``accelerate launch --multi_gpu --num_processes N`` (GPUs) the shares are accelerate's
``PartialState.split_between_processes`` and the results are gathered with ``accelerate.utils.gather_object`` (gloo on
CPUs, NCCL on GPUs). The results are identical to one process: the same function runs on the same rows, only on
another process.

On CPUs use ``torchrun``: ``accelerate launch --cpu --num_processes 2`` (accelerate 1.16) starts ONE process unless
an MPI hostfile is given (its simple launcher only sets the rendezvous variables).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, TypeVar

Row = TypeVar("Row")
Result = TypeVar("Result")


def distributed_state():
    """accelerate's ``PartialState`` (a shared singleton: the Trainer's, when a Trainer made it first).

    Without a GPU the state is asked for CPU processes: accelerate 1.16 only sets up gloo for ``torchrun`` processes
    when told ``cpu=True`` (else it sees no accelerator and reports one process per process).
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def map_across_processes(
    function: Callable[[List[Row]], Sequence[Result]],
    rows: Sequence[Row],
    batch_size: int,
    *,
    progress: bool = False,
    description: Optional[str] = None,
) -> List[Result]:
    """``function`` over consecutive batches of this process's share of ``rows``; every process returns the results
    of all ``rows``, in row order.

    Args:
        function: Maps a batch (a list of at most ``batch_size`` rows) to one result per row, in order.
        rows: The work items (e.g. histories).
        batch_size: Rows per ``function`` call.
        progress: A tqdm bar over this process's batches, on the main process only.
        description: The bar's label.

    Raises:
        ValueError: ``batch_size`` is not an integer >= 1, or ``function`` returns another number of results than
            rows it was given.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid; pass an integer >= 1.")
    from accelerate.utils import gather_object

    state = distributed_state()
    rows = list(rows)
    with state.split_between_processes(list(range(len(rows)))) as share:
        starts = range(0, len(share), batch_size)
        if progress and state.is_main_process:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=description, unit="batch")
        results: List[Result] = []
        for start in starts:
            batch = [rows[position] for position in share[start : start + batch_size]]
            outputs = list(function(batch))
            if len(outputs) != len(batch):
                raise ValueError(f"{description or 'function'} returned {len(outputs)} results for {len(batch)} rows.")
            results.extend(outputs)
    if state.num_processes == 1:
        return results
    # Shares are contiguous and in process order, so the concatenation is in row order.
    return gather_object(results)


def release_processes() -> None:
    """End a multi-process run cleanly: wait for every process, then destroy the process group.

    Call it last in a script launched by ``torchrun`` (a no-op on one process). Left to interpreter exit, the gloo
    group of torch 2.13 can be torn down while another process is still leaving, and a process then aborts
    ("terminate called without an active exception", SIGABRT) after its work is done, so the launcher reports a
    failure.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sum_over_processes(accelerator, tensor):
    """All-reduce sum of ``tensor`` over the training processes of ``accelerator`` (the tensor itself on one)."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor, reduction="sum")


__all__ = ["distributed_state", "map_across_processes", "release_processes", "sum_over_processes"]
