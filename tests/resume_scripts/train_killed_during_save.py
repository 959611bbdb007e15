"""`codiemb train` in a subprocess that can kill itself (SIGKILL, as `kill -9`) in the middle of a checkpoint save.

Usage: python train_killed_during_save.py STEPS_FILE KILL_AT_STEP -- CODIEMB_TRAIN_ARGS...

KILL_AT_STEP > 0: while saving ``checkpoint-KILL_AT_STEP``, the process SIGKILLs itself right after the model weights
are written (before the optimizer, scheduler, RNG and trainer states), as a `kill -9` during the save would leave it.
KILL_AT_STEP = 0: no kill. Every optimizer step the process runs is appended to STEPS_FILE (one number a line), so
the caller sees which steps a resumed run trained.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from hf_codiemb.commands.train import run
from hf_codiemb.trainer import CoDiEmbTrainer


def main() -> int:
    steps_file, kill_at, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: STEPS_FILE KILL_AT_STEP -- ARGS"
    kill_at_step = int(kill_at)
    original_save, original_training_step = CoDiEmbTrainer._save, CoDiEmbTrainer.training_step

    def save_then_die(self, output_dir=None, state_dict=None):
        original_save(self, output_dir, state_dict)
        if kill_at_step and Path(output_dir or "").name == f"checkpoint-{kill_at_step}":
            os.kill(os.getpid(), signal.SIGKILL)

    def recording_training_step(self, model, inputs, num_items_in_batch=None):
        with open(steps_file, "a") as file:
            file.write(f"{self.state.global_step + 1}\n")
        return original_training_step(self, model, inputs, num_items_in_batch)

    CoDiEmbTrainer._save = save_then_die
    CoDiEmbTrainer.training_step = recording_training_step
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(train_args)


if __name__ == "__main__":
    sys.exit(main())
