"""Resumable training state of the one loop: what a checkpoint holds and how a run continues.

A checkpoint is taken at the end of a round that reports an evaluation (every
``run.checkpoint_every`` rounds). Each rank keeps its own: the student, its optimiser and LR
schedule and the KDCI attention and dictionary are the same on every rank (DDP), but the method's
generator / image pool / random streams are per rank (each rank synthesises its own data). A run
resumed from a checkpoint continues with the next round and, on the same hardware, reproduces the
uninterrupted run exactly (``tests/test_resume.py``).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STUDENT_FILE = "student.pt"  # the deployable student (+ KDCI attention), rank 0
RANK_FILE = "train_state_rank{rank}.pt"  # everything one rank needs to continue
FORMAT = 1


@dataclass
class Snapshot:
    """One checkpoint of one rank: ``student`` is the deployable model, ``resume`` the rest."""

    student: dict[str, Any]
    resume: dict[str, Any]
    final: bool

    @property
    def round(self) -> int:
        """Rounds completed."""
        return int(self.resume["round"])


@dataclass
class Progress:
    """Where a resumed loop continues."""

    round: int  # rounds already completed
    step: int
    elapsed_s: float
    teacher_acc: float
    class_counts: list[int] | None = None  # teacher arg-max counts over the KD batches so far


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(progress: Progress, *, rank: int, world_size: int, student: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, method: Any,
            kdci: Any) -> dict[str, Any]:
    """This rank's whole training state after ``progress.round`` rounds: a copy, so training
    on does not change it (state dicts hold the live tensors)."""
    return copy.deepcopy({"format": FORMAT, "round": progress.round, "step": progress.step,
            "elapsed_s": progress.elapsed_s, "teacher_acc": progress.teacher_acc,
            "class_counts": progress.class_counts,
            "rank": rank, "world_size": world_size, "student": student.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "method": method.state_dict(), "kdci": None if kdci is None else kdci.state_dict(),
            "rng": rng_state()})


def restore(state: dict[str, Any], *, rank: int, world_size: int, student: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, method: Any,
            kdci: Any) -> Progress:
    """Load ``capture``'s output into freshly built objects; returns where to continue."""
    if state.get("format") != FORMAT:
        raise ValueError(f"resume state has format {state.get('format')!r}; this kdci_ray "
                         f"writes format {FORMAT}: start the trial afresh")
    if state["world_size"] != world_size or state["rank"] != rank:
        raise ValueError(
            f"resume state of rank {state['rank']} of {state['world_size']} cannot continue "
            f"rank {rank} of {world_size}: resume with the run.workers the run started with"
        )
    if (state["kdci"] is None) != (kdci is None):
        raise ValueError("resume state and config disagree on kdci.enabled")
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    method.load_state_dict(state["method"])
    if kdci is not None:
        kdci.load_state_dict(state["kdci"])
    set_rng_state(state["rng"])
    return Progress(round=int(state["round"]), step=int(state["step"]),
                    elapsed_s=float(state["elapsed_s"]),
                    teacher_acc=float(state["teacher_acc"]),
                    class_counts=state.get("class_counts"))


def save_snapshot(directory: Path, snapshot: Snapshot, rank: int) -> None:
    """Write one rank's files of a checkpoint directory (rank 0 adds the student)."""
    if rank == 0:
        torch.save(snapshot.student, directory / STUDENT_FILE)
    torch.save(snapshot.resume, directory / RANK_FILE.format(rank=rank))


def load_resume_state(directory: Path, rank: int) -> dict[str, Any]:
    """This rank's resume state from a checkpoint directory; a clear error when it is missing."""
    path = directory / RANK_FILE.format(rank=rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {directory} holds no resume state for rank {rank} ({path.name}); it was "
            f"written by a run with fewer workers or by an older kdci_ray: start the trial afresh"
        )
    return torch.load(path, map_location="cpu", weights_only=False)


def newest_resume(checkpoints: Path, given: dict[str, Any] | None, rounds: int,
                  rank: int = 0, world_size: int = 1) -> dict[str, Any] | None:
    """This rank's state to continue from: ``given`` (the checkpoint Ray registered), or a newer
    one among the ``checkpoint_*`` directories persisted under ``checkpoints``.

    A worker killed just after persisting a checkpoint, before Ray registered it, leaves one that
    Ray does not hand back; it is taken when every rank's file of it loads (a copy cut short by
    the kill does not), so all ranks pick the same directory. A final one (``rounds`` done) Ray
    did not register is passed over: the run's final result would be lost with it (the last
    rounds run again instead)."""
    best, best_round = given, int(given["round"]) if given is not None else -1
    for directory in sorted(Path(checkpoints).glob("checkpoint_*")):
        try:
            states = [load_resume_state(directory, r) for r in range(world_size)]
        except Exception:  # noqa: BLE001 - missing or cut short by a kill: another one serves
            continue
        done = int(states[rank].get("round", 0))
        if done < rounds and done > best_round and all(
                int(s.get("round", -1)) == done for s in states):
            best, best_round = states[rank], done
    return best
