"""BERT-base (uncased) on IMDB, sized for a GPU or TPU slice; not run on the 2-core CPU.

Needs the checkpoint in the Hugging Face cache or a local folder (`--config.model.name=PATH`).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "imdb"
    config.data.max_length = 512
    config.data.validation_size = 2500
    config.model.name = "google-bert/bert-base-uncased"
    config.model.pooling = "cls"
    config.model.dtype = "bfloat16"
    config.optim.learning_rate = 2e-5
    config.train.global_batch_size = 128
    config.train.eval_batch_size = 256
    config.train.num_epochs = 3
    config.train.eval_every_steps = 200
    config.train.checkpoint_every_steps = 200
    return config
