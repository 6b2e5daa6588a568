"""MiniLM on all of IMDB (22,500 train, 2,500 validation, 25,000 test) at 512, default loss."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "imdb"
    config.data.max_length = 512
    config.data.validation_size = 2500
    config.model.pooling = "mean"
    config.optim.learning_rate = 5e-5
    config.train.global_batch_size = 32
    config.train.num_epochs = 2
    config.train.eval_every_steps = 500
    config.train.checkpoint_every_steps = 200
    return config
