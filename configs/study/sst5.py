"""The five-class loss study: SST-5 (very negative .. very positive), plain cross-entropy against
label smoothing, focal (gamma 2), the seed's focal loss and confidence weighting alone, 3 seeds.

Every run is `configs/sst5_minilm.py` (MiniLM, 8,544 training sentences, the standard
validation split for model selection, the 2,210 test sentences) with one loss preset; the presets
take their K-class forms (`jaxsent.losses`). The paired comparisons use the K-class metrics
(accuracy, macro-F1, mean absolute error in classes, NLL, Brier, top-label and classwise ECE, and
the calibration metrics after temperature scaling). No extra evaluation set: SST-2 and Rotten
Tomatoes hold SST-5's sentences, so they are no out-of-domain test. Results in docs/study.md.

    python -m train.study --config configs/study/sst5.py --workdir runs/study_sst5 \\
        --archive docs/study/sst5
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/sst5_minilm.py"
    # Whole batches: the seed's losses normalise over the batch and refuse micro-batches.
    config.overrides = {"data": {"extra_evals": ""}, "train": {"micro_batch_size": 0}}
    config.variants = ("bce", "bce_ls", "focal_gamma2", "focal_seed", "confidence_only")
    config.custom_variants = {}
    config.seeds = (0, 1, 2)
    config.baseline = "bce"
    return config
