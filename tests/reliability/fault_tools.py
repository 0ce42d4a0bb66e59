"""Helpers of the fault, security and privacy tests, and a child-process entry point that dies on cue.

Run as a module, it is the process the fault tests kill::

    python -m tests.reliability.fault_tools train [--kill-at-step N] [--die-writing NAME --nth K] -- ARGS
    python -m tests.reliability.fault_tools export CKPT OUT NAME [--die-writing NAME --nth K]
                                                  [--die-replacing NAME]

``train`` runs ``scripts.train.main(ARGS)``; ``export`` runs ``backend.workflows.export.export_bundle``.
The faults are real ``SIGKILL``\\ s the process sends itself, so no ``finally`` block, ``atexit``
hook or temporary-file cleanup runs, exactly as when the OOM killer or a scheduler ends a job:

* ``--kill-at-step N``: right after optimiser step ``N`` (after that step's checkpoint, if any).
* ``--die-writing NAME --nth K``: during the ``K``-th atomic write of a file called ``NAME``, once
  half of its bytes are on disk (``os.fdopen`` is wrapped, so the project's own
  :func:`backend.files.atomic_write_bytes` runs unchanged up to that point).
* ``--die-replacing NAME``: just before the first ``os.replace`` onto a file called ``NAME``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT, write_synthetic_dataset

#: Arguments of every tiny training run of these tests (overrides must come last: they are positional).
TRAIN_FLAGS: tuple[str, ...] = ("--config", str(REPO_ROOT / "cfgs" / "debug" / "cpu_tiny.yaml"), "--img_size", "32",
                                "--batch_size", "4", "--no_test")
TRAIN_OVERRIDES: tuple[str, ...] = ("trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0",
                                    "trainer.checkpoint_every_n_steps=2")


class Exploit:
    """A pickle payload: unpickling it calls ``Path.touch(marker)``, so the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-shaped ``.ckpt`` (``torch.save`` zip) whose hyper-parameters carry :class:`Exploit`."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"net.w": torch.zeros(2)}, "global_step": 3,
                "hyper_parameters": {"config": Exploit(marker)}}, path)
    return path


def tiny_dataset(root: Path) -> Path:
    """48 synthetic 32 px lesions and their ``labels.csv`` (every diagnosis, some metadata blanks)."""
    return write_synthetic_dataset(root, n=48, size=32)


def train_argv(csv: Path, output_dir: Path, epochs: int = 2, seed: int = 7, resume: bool = False) -> list[str]:
    """``scripts.train`` arguments of a tiny run: 9 steps an epoch, ``last.ckpt`` every 2 steps."""
    argv = [*TRAIN_FLAGS, "--csv", str(csv), "--max_epochs", str(epochs), "--seed", str(seed),
            "--log_dir", str(output_dir)]
    if resume:
        argv += ["--resume_version", "0"]
    return [*argv, *TRAIN_OVERRIDES]


def child_env() -> dict[str, str]:
    """Environment of the child processes: the repo importable, one thread (2 busy cores)."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def child_command(*args: str) -> list[str]:
    """The command line of ``python -m tests.reliability.fault_tools ARGS``."""
    return [sys.executable, "-m", "tests.reliability.fault_tools", *args]


def _child_main(args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    sys.exit(main(list(args)))


def start_child(args: list[str], log: Path) -> Any:
    """Start :func:`main` with ``args`` in a fresh child interpreter (stdout and stderr to ``log``).

    The child is *spawned*, not forked: the test process has torch's OpenMP pool, Streamlit and
    tqdm threads running by the time these tests run in the whole suite, and a forked copy of a
    multi-threaded process can deadlock on a lock another thread held (it did: the children hung
    before their first line). The child's ``exitcode`` is ``-signal.SIGKILL`` when it was killed.

    Returns:
        The started :class:`multiprocessing.Process`.
    """
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_child_main, args=(list(args), str(log)))
    proc.start()
    return proc


def write_untrained_checkpoint(path: Path, seed: int = 0, img_size: int = 32) -> Path:
    """A valid DermaLens ``.ckpt`` of an untrained tiny image-only net (no training: well under a second)."""
    import torch

    from backend.config import from_dict, to_dict
    from backend.data.schema import DIAGNOSES
    from backend.data.transforms import preprocessing_dict
    from backend.files import atomic_torch_save
    from backend.models.lesion_net import build_experiment_model
    from backend.training.config import ExperimentConfig

    cfg = from_dict(ExperimentConfig, {
        "data": {"img_size": img_size, "use_metadata": False},
        "model": {"backbone": "dermaresnet_se_tiny", "meta_hidden": 16, "fusion_dim": 32},
    })
    torch.manual_seed(seed)
    net = build_experiment_model(cfg.model, cfg.data)
    return atomic_torch_save({
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"config": to_dict(cfg), "classes": list(DIAGNOSES),
                             "thickness_scaler": {"mean": 0.3, "std": 0.5}, "metadata_encoder": None,
                             "preprocessing": preprocessing_dict(cfg.data)},
    }, path)


def untrained_bundle(models_dir: Path, name: str = "tiny", img_size: int = 64) -> Path:
    """An untrained tiny bundle ``models_dir/name`` for app and CLI tests that check handling, not accuracy."""
    from backend.workflows.export import export_bundle

    ckpt = write_untrained_checkpoint(models_dir.parent / f".{name}.ckpt", img_size=img_size)
    bundle = export_bundle(ckpt, models_dir / name, name=f"Untrained {name}", version="test-1").bundle_dir
    ckpt.unlink()
    return bundle


def lesion_png(seed: int, size: int = 64, exif: bool = False) -> bytes:
    """A synthetic lesion as PNG bytes; with ``exif`` a camera make/model and a GPS block are embedded."""
    from tests.app.conftest import image_bytes

    return image_bytes(seed, "PNG", size=size, exif=exif)


# -- the dying child ------------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _HalfWriter:
    """A file object that writes half of what it is given, syncs it to disk, then SIGKILLs the process."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        self._fh.write(bytes(data)[: len(data) // 2])
        self._fh.flush()
        os.fsync(self._fh.fileno())
        _die()
        raise AssertionError("unreachable")  # pragma: no cover

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()


def arm_die_writing(name: str, nth: int) -> None:
    """Die half-way through the ``nth`` atomic write of a file called ``name`` (see the module docstring)."""
    import backend.files as ckpt_io

    real_write, real_fdopen = ckpt_io.atomic_write_bytes, os.fdopen
    state = {"count": 0, "armed": False}

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        fh = real_fdopen(fd, *args, **kwargs)
        if state["armed"]:
            return _HalfWriter(fh)
        return fh

    def counting_write(path: Any, data: bytes) -> Path:
        if Path(path).name == name:
            state["count"] += 1
            state["armed"] = state["count"] == nth
        try:
            return real_write(path, data)
        finally:
            state["armed"] = False

    os.fdopen = fdopen
    ckpt_io.atomic_write_bytes = counting_write
    import backend.io.bundle as bundle_io  # imported the name before the patch

    bundle_io.atomic_write_bytes = counting_write


def arm_die_replacing(name: str) -> None:
    """Die just before the first ``os.replace`` whose destination is called ``name``."""
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == name:
            _die()
        real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def arm_kill_at_step(step: int) -> None:
    """SIGKILL the training process right after optimiser step ``step`` (after its checkpoint callbacks)."""
    from lightning.pytorch.callbacks import Callback

    import backend.training.run as run_mod

    class KillAtStep(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step >= step:
                _die()

    real_build = run_mod.build_trainer

    def build_trainer(cfg: Any, run_dir: Path) -> Any:
        trainer = real_build(cfg, run_dir)
        trainer.callbacks.append(KillAtStep())  # after the ModelCheckpoints Lightning put last
        return trainer

    run_mod.build_trainer = build_trainer


def main(argv: list[str] | None = None) -> int:
    """Child entry point (see the module docstring); returns the exit code of the wrapped command."""
    p = argparse.ArgumentParser(prog="python -m tests.reliability.fault_tools")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--kill-at-step", type=int)
    export = sub.add_parser("export")
    export.add_argument("checkpoint")
    export.add_argument("output")
    export.add_argument("name")
    export.add_argument("--die-replacing")
    for parser in (train, export):
        parser.add_argument("--die-writing")
        parser.add_argument("--nth", type=int, default=1)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = p.parse_args(argv)
    if args.die_writing:
        arm_die_writing(args.die_writing, args.nth)
    if args.command == "train":
        if args.kill_at_step is not None:
            arm_kill_at_step(args.kill_at_step)
        from scripts.train import main as train_main

        return train_main(rest)
    if args.die_replacing:
        arm_die_replacing(args.die_replacing)
    from backend.workflows.export import export_bundle

    export_bundle(args.checkpoint, args.output, name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
