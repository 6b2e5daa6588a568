"""Smoke test: MiniLM on an SST-2 subset, a few minutes on 2 CPU cores (run in CI)."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "sst2"
    config.data.eval_split = "validation"  # GLUE's SST-2 test split has no labels
    config.data.train_size = 4800
    config.data.validation_size = 256
    config.data.max_length = 64
    config.data.num_buckets = 2
    config.model.pooling = "mean"
    config.optim.learning_rate = 1e-4
    config.train.global_batch_size = 32
    config.train.num_epochs = 1
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 100
    return config
