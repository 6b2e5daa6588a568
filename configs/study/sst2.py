"""The SST-2 loss study: every loss preset, 3 seeds, 16,000 training sentences, evaluated on the
SST-2 validation set and, cross-domain, on all 10,662 Rotten Tomatoes sentences.

About 2 hours on 2 CPU cores (27 runs); results in docs/study.md.

    python -m train.study --config configs/study/sst2.py --workdir runs/study_sst2
"""

import ml_collections

PRESETS = (
    "bce",
    "bce_ls",
    "length_only",
    "confidence_only",
    "weighted",
    "weighted_stopgrad",
    "focal_seed",
    "focal_gamma2",
    "reversed_focal",
)


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/smoke.py"
    config.overrides = {
        "data": {
            "train_size": 16000,
            "num_buckets": 4,  # the archived runs' (configs/smoke.py: 2 since 2026-12-08)
            "validation_size": 1000,
            "extra_evals": "rotten_tomatoes:all",
        },
        "train": {"num_epochs": 1, "eval_every_steps": 250, "checkpoint_every_steps": 100},
    }
    config.variants = PRESETS
    config.custom_variants = {}
    config.seeds = (0, 1, 2)
    config.baseline = "bce"
    return config
