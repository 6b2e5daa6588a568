"""The IMDB loss study (long reviews: where length weighting should matter most): five presets,
3 seeds, 4,000 training reviews at 256 tokens, a fixed stratified sample of 2,000 test reviews.

About 4 hours on 2 CPU cores (15 runs of about 16 minutes); results in docs/study.md.

    python -m train.study --config configs/study/imdb.py --workdir runs/study_imdb
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/imdb_minilm.py"
    # Whole batches, as the study ran: the seed's losses normalise over the batch.
    config.overrides = {"data": {"train_size": 4000}, "train": {"micro_batch_size": 0}}
    config.variants = ("bce", "weighted", "focal_seed", "reversed_focal", "length_only")
    config.custom_variants = {}
    config.seeds = (0, 1, 2)
    config.baseline = "bce"
    return config
