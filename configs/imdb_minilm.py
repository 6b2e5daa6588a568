"""The README's main job: MiniLM fine-tuned on IMDB with the seed's focal loss, ~22 min on 2 CPU
cores.

To fit the budget it trains on a stratified subset of IMDB train and reports on a fixed
stratified sample of the test split; the run says so in its output. `imdb_minilm_full` is the
same recipe (head-only truncation and the default loss aside) on all of IMDB.
"""

from configs import default
from jaxsent.losses import LOSS_PRESETS


def get_config():
    config = default.get_config()
    config.data.name = "imdb"
    config.data.max_length = 256
    # Head + tail (64 + 190 tokens) instead of the first 254: +1.65 points on the test sample
    # (docs/benchmarks.md), as Sun et al. (2019) found on IMDB.
    config.data.truncation = "head_tail"
    config.data.train_size = 6000
    config.data.validation_size = 500
    config.data.eval_size = 2000
    # The seed's focal loss, with which this job's figures were measured (docs/benchmarks.md). The
    # library default is plain BCE; the IMDB study (docs/study.md) found BCE 1.0 point better on
    # IMDB too, so this job should switch once its three seeds are measured again with BCE.
    config.loss.update(LOSS_PRESETS["focal_seed"])
    config.model.pooling = "mean"
    config.optim.learning_rate = 1e-4
    config.train.global_batch_size = 32
    config.train.num_epochs = 1
    config.train.checkpoint_every_steps = 25
    return config
