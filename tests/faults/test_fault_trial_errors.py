"""Fault 5: a trial that raises is recorded `failed` with its error message, and the sweep finishes.

The failure is a real one that no check up front can see: the dataset's layout is valid (so the sweep
starts), but one image file is corrupt, and the trial dies decoding it. A diverging trial (non-finite loss)
is the other kind of trial failure; tests/test_sweep.py shows it recorded `diverged` while the sweep goes on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fault_helpers import write_space
from PIL import Image

import run_study


def image_folder(root, corrupt: str):
    """train/{a,b} and test/{a,b} of small PNGs, plus one file that is not an image at all."""
    for split, count in (("train", 6), ("test", 2)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = np.full((16, 16, 3), 20 * index + (120 if label == "b" else 0), np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")
    (root / corrupt).write_bytes(b"\x89PNG but the rest was lost when the disk filled")
    return root


def test_a_raising_trial_is_recorded_failed_and_the_sweep_finishes(ray_session, tmp_path, capsys):
    data = image_folder(tmp_path / "images", corrupt="train/b/damaged.png")
    space = write_space(tmp_path, "raising", "design: one_at_a_time\nmethods: [ce]\n"
                        f"vary:\n  dataset: [digits, 'imagefolder:{data}']\n", epochs=1, image_size=16)
    code = run_study.main(["sweep", "--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "raising",
                           "--max-failures", "0"])
    assert code == 0  # the sweep itself succeeds
    printed = capsys.readouterr().out
    results = pd.read_parquet(tmp_path / "runs" / "raising" / "results.parquet").set_index("trial_id")
    assert len(results) == 2

    healthy = results.loc["ce-base-seed0"]
    assert healthy["status"] == "completed" and healthy["error"] == ""
    broken = results.drop(index="ce-base-seed0").iloc[0]
    assert broken["status"] == "failed"
    assert "damaged.png" in broken["error"] and "\n" not in broken["error"]  # one line, naming the file
    assert np.isnan(broken["test_top1"]) and broken["checkpoint"] == ""
    assert f"trial {broken.name} [ce]" in printed and ": failed" in printed  # said on the console too
