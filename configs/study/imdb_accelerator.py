"""The full study for an accelerator (not run here): all of IMDB at 512 tokens, 2 epochs, every
loss preset, 5 seeds, evaluated on the whole test split and cross-domain on Rotten Tomatoes.

45 runs of `configs/imdb_minilm_full.py`; on one modern GPU each run takes minutes.

    python -m train.study --config configs/study/imdb_accelerator.py --workdir gs://BUCKET/study
"""

import ml_collections

from configs.study.sst2 import PRESETS


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/imdb_minilm_full.py"
    config.overrides = {"data": {"extra_evals": "rotten_tomatoes:all"}}
    config.variants = PRESETS
    config.custom_variants = {}
    config.seeds = (0, 1, 2, 3, 4)
    config.baseline = "bce"
    return config
