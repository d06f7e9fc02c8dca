"""experiments.compare --reuse: a committed run is taken instead of trained only when its config is the same
and no workdir of it exists here, so added seeds never mix with runs of another config."""

import dataclasses
import os

from experiments.compare import reusable, seeds_text
from w12_jax.presets import get_preset

CFG = get_preset("mnist5k")


def test_a_run_is_reused_only_with_the_same_config_and_no_workdir(tmp_path):
    stored = {"method": "main", "seed": 0, "config": CFG.to_dict(), "samplers": {"euler 1": {}}}
    previous = {"runs": {"main-seed0": stored}, "revision": "abc"}
    workdir = str(tmp_path / "main-seed0")
    assert reusable(previous, "main-seed0", CFG, workdir) == {**stored, "reused_from": "abc"}
    assert reusable(previous, "main-seed1", CFG, workdir) is None  # not in the file
    assert reusable(previous, "main-seed0", dataclasses.replace(CFG, iterations=CFG.iterations + 1), workdir) is None
    assert reusable(None, "main-seed0", CFG, workdir) is None
    # a config written before a field existed is read with that field's default
    older = {k: v for k, v in CFG.to_dict().items() if k != "potential_conv_pool"}
    assert reusable({"runs": {"main-seed0": {**stored, "config": older}}}, "main-seed0", CFG, workdir) is not None
    os.makedirs(os.path.join(workdir, "checkpoints"))  # a run here is measured, not taken from the file
    assert reusable(previous, "main-seed0", CFG, workdir) is None


def test_seeds_text_names_each_group_of_methods():
    runs = {f"{m}-seed{s}": {"method": m, "seed": s} for m in ("main", "otcfm") for s in (0, 1, 2)}
    assert seeds_text(runs) == "Training seeds 0, 1, 2 of each method"
    runs["main-seed3"] = {"method": "main", "seed": 3}
    assert seeds_text(runs) == "Training seeds 0, 1, 2, 3 of main; 0, 1, 2 of otcfm"
