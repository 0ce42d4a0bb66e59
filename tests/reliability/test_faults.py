"""Faults: training killed with SIGKILL at seeded-random points resumes to the uninterrupted result;
checkpoint and bundle writes killed half-way never leave a corrupt file or a half bundle.

Every fault is a real ``SIGKILL`` of a child process (``tests.reliability.fault_tools``, spawned
in a fresh interpreter), so no cleanup code runs. The kill points come from
``random.Random(KILL_SEED)``: the same points on every run, and points of different kinds (right
after an optimiser step, half-way through writing ``last.ckpt``, from outside at a random moment
after a checkpoint)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from backend.files import safe_torch_load
from backend.io.bundle import PENDING_CARD_FILE, load_bundle, read_card
from backend.io.checkpoint import load_lesion_checkpoint
from backend.workflows.export import export_bundle
from scripts.train import main as train_main
from tests.reliability.fault_tools import (
    start_child,
    tiny_dataset,
    train_argv,
    write_untrained_checkpoint,
)

pytestmark = pytest.mark.slow  # child processes killed on purpose; about a minute

KILL_SEED = 20240611
STEPS_PER_EPOCH = 9  # 36 train rows / batch 4 (see tiny_dataset)
EPOCHS = 2
#: |val/loss(resumed) - val/loss(uninterrupted)| allowed at the end. A mid-epoch resume restarts the
#: epoch's shuffled order (the data loader is not resumable), so the killed run sees some batches
#: twice and others not at all in that epoch: the loss differs slightly; the step count must not.
VAL_LOSS_TOLERANCE = 0.35
CHILD_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("fault_data"))


def final_val_loss(run_dir: Path) -> tuple[int, float]:
    """``(epoch, val/loss)`` of the last validation logged in the run's ``metrics.csv``."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    rows = metrics.dropna(subset=["val/loss"])
    assert not rows.empty, f"no val/loss in {run_dir / 'metrics.csv'}"
    return int(rows["epoch"].iloc[-1]), float(rows["val/loss"].iloc[-1])


def run_child(args: list[str], log: Path) -> int:
    """Run a fault_tools child (spawned) to its end or its death; returns its exit code (-9: SIGKILL)."""
    proc = start_child(args, log)
    proc.join(CHILD_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"child {args[:3]} still running after {CHILD_TIMEOUT_S} s; log: {log}")
    return proc.exitcode


def checkpoint_state(ckpt: Path) -> int:
    """The global step of ``ckpt`` after checking that it loads safely and rebuilds the network."""
    loaded = load_lesion_checkpoint(ckpt)  # raises CheckpointError on a truncated or foreign file
    assert loaded.classes and loaded.net is not None
    return int(safe_torch_load(ckpt)["global_step"])


def kill_from_outside(args: list[str], ckpt: Path, after_step: int, delay_s: float, log: Path) -> int:
    """Start a child; SIGKILL it ``delay_s`` after ``ckpt`` first holds a step >= ``after_step``.

    Returns:
        The child's exit code (``-signal.SIGKILL`` when the kill landed).
    """
    proc = start_child(args, log)
    try:
        seen, deadline = None, time.monotonic() + CHILD_TIMEOUT_S
        while proc.is_alive() and time.monotonic() < deadline:
            try:
                st = ckpt.stat()
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                key = None
            if key is not None and key != seen:
                seen = key
                if int(safe_torch_load(ckpt)["global_step"]) >= after_step:
                    time.sleep(delay_s)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return proc.exitcode


def test_sigkilled_training_resumes_to_the_uninterrupted_result(dataset, tmp_path):
    """Three kills of three kinds at seeded-random points; the last resume ends where an unkilled run ends."""
    rng = random.Random(KILL_SEED)
    step_a = rng.randint(3, 7)  # kind 1: right after an optimiser step (odd steps lose unsaved progress)
    nth_write = rng.randint(1, 2)  # kind 2: half-way through writing last.ckpt
    outside_gap = rng.choice([2, 4])  # kind 3: from outside, a random moment after a checkpoint
    outside_delay = rng.uniform(0.0, 0.15)

    # The uninterrupted reference, same seed and flags, in this process.
    reference_out = tmp_path / "reference"
    assert train_main(train_argv(dataset, reference_out, epochs=EPOCHS)) == 0
    reference_run = reference_out / "cpu_tiny" / "version_0"
    reference = safe_torch_load(reference_run / "ckpts" / "last.ckpt")
    assert reference["global_step"] == EPOCHS * STEPS_PER_EPOCH  # last.ckpt is the finished run, not step 16

    out = tmp_path / "killed"
    run = out / "cpu_tiny" / "version_0"
    last = run / "ckpts" / "last.ckpt"
    train = ["train", "--"]
    resume = train_argv(dataset, out, epochs=EPOCHS, resume=True)

    # Kill 1: SIGKILL right after step_a.
    rc = run_child(["train", "--kill-at-step", str(step_a), "--", *train_argv(dataset, out, epochs=EPOCHS)],
                   tmp_path / "kill1.log")
    assert rc == -signal.SIGKILL, (tmp_path / "kill1.log").read_text()[-2000:]
    step = checkpoint_state(last)
    assert step_a - 2 < step <= step_a, (step_a, step)

    # Kill 2: SIGKILL half-way through the nth_write-th write of last.ckpt after the resume.
    rc = run_child(["train", "--die-writing", "last.ckpt", "--nth", str(nth_write), "--", *resume],
                   tmp_path / "kill2.log")
    assert rc == -signal.SIGKILL, (tmp_path / "kill2.log").read_text()[-2000:]
    half_written = list(last.parent.glob(".last.ckpt.*.tmp"))
    assert half_written, "the child died before writing: the fault was not injected"
    before = step
    step = checkpoint_state(last)  # the old last.ckpt, whole: the half file never replaced it
    assert before <= step < before + 2 * nth_write

    # Kill 3: SIGKILL from outside, outside_delay s after last.ckpt reaches step + outside_gap.
    target = step + outside_gap
    assert target <= EPOCHS * STEPS_PER_EPOCH - 4  # leaves the child seconds of work: the kill cannot miss
    rc = kill_from_outside([*train, *resume], last, target, outside_delay, tmp_path / "kill3.log")
    assert rc == -signal.SIGKILL, (tmp_path / "kill3.log").read_text()[-2000:]
    assert not half_written[0].exists()  # the resume removed the killed write's leftover
    step = checkpoint_state(last)
    assert step >= target

    # The last resume runs to the end.
    rc = run_child([*train, *resume], tmp_path / "final.log")
    assert rc == 0, (tmp_path / "final.log").read_text()[-3000:]
    final = safe_torch_load(last)
    assert final["global_step"] == reference["global_step"]
    assert final["epoch"] == reference["epoch"]
    assert list(run.glob("metrics.part*.csv")), "the curves logged before a resume were deleted"
    ref_epoch, ref_loss = final_val_loss(reference_run)
    got_epoch, got_loss = final_val_loss(run)
    assert got_epoch == ref_epoch == EPOCHS - 1
    assert abs(got_loss - ref_loss) <= VAL_LOSS_TOLERANCE, (got_loss, ref_loss)
    assert not list(last.parent.glob(".last.ckpt.*.tmp"))


def test_bundle_export_killed_at_any_point_leaves_a_whole_bundle(tmp_path):
    """Re-export over a bundle killed mid-weights, mid-card, between the swaps: old or new bundle, never half."""

    old_ckpt = write_untrained_checkpoint(tmp_path / "old.ckpt", seed=0)
    new_ckpt = write_untrained_checkpoint(tmp_path / "new.ckpt", seed=1)
    faults = {
        "mid_weights": ["--die-writing", "model.safetensors"],
        "mid_pending_card": ["--die-writing", "model_card.json.pending"],
        "before_card_swap": ["--die-replacing", "model_card.json"],
    }
    bundles = {}
    for fault in faults:
        bundles[fault] = export_bundle(old_ckpt, tmp_path / fault, name="old").bundle_dir
    procs = {fault: start_child(["export", str(new_ckpt), str(bundles[fault]), "new", *args],
                                 tmp_path / f"{fault}.log")
             for fault, args in faults.items()}
    outcome = {}
    for fault, proc in procs.items():
        proc.join(CHILD_TIMEOUT_S)
        assert proc.exitcode == -signal.SIGKILL, (fault, (tmp_path / f"{fault}.log").read_text()[-2000:])
        loaded = load_bundle(bundles[fault])  # never raises: weights and card always belong together
        outcome[fault] = loaded.card["name"]
        assert loaded.model.net is not None
    # Killed before the weights changed: the old bundle; killed after: the new one (the pending card).
    assert outcome == {"mid_weights": "old", "mid_pending_card": "old", "before_card_swap": "new"}
    assert read_card(bundles["before_card_swap"])["name"] == "old"  # the card file itself was not yet swapped
    assert (bundles["before_card_swap"] / PENDING_CARD_FILE).is_file()
    # The next export over a killed one finishes the job and cleans up.
    export_bundle(new_ckpt, bundles["before_card_swap"], name="newer")
    assert read_card(bundles["before_card_swap"])["name"] == "newer"
    assert not (bundles["before_card_swap"] / PENDING_CARD_FILE).exists()
