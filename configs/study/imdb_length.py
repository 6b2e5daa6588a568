"""Length weighting on IMDB as the seed applied it: in random batches.

jaxsent batches examples of similar length together (`data.num_buckets`), which is faster but
leaves the batch-normalised length weights of `length_only` nearly equal within a batch: on these
4,000 reviews the weight relative to its batch mean has a standard deviation of 0.027 with 8
buckets against 0.160 in random batches (docs/study.md). The seed's PyTorch loader drew random
batches, so this study pads every batch to 256 tokens (`num_buckets = 1`) and compares `bce` with
`length_only` there; everything else is `configs/study/imdb.py`.

About 2 hours on 2 CPU cores (6 runs); results in docs/study.md.

    python -m train.study --config configs/study/imdb_length.py --workdir runs/study_imdb_length
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.base = "configs/imdb_minilm.py"
    # Whole batches, as the study ran: the seed's losses normalise over the batch.
    config.overrides = {
        "data": {"train_size": 4000, "num_buckets": 1},
        "train": {"micro_batch_size": 0},
    }
    config.variants = ("bce", "length_only")
    config.custom_variants = {}
    config.seeds = (0, 1, 2)
    config.baseline = "bce"
    return config
