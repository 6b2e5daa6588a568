"""Smoke study: the default model on SST-2, `bce` vs `focal_seed`, 2 seeds, 40 steps each.

Minutes on 2 CPU cores; it exercises the whole study pipeline, not the hypotheses.

    python -m train.study --config configs/study/smoke.py --workdir runs/study_smoke
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/smoke.py"
    config.overrides = {
        "data": {"train_size": 1280, "validation_size": 256},
        "train": {"num_steps": 40, "checkpoint_every_steps": 20},
    }
    config.variants = ("bce", "focal_seed")
    config.custom_variants = {}
    config.seeds = (0, 1)
    config.baseline = "bce"
    return config
