"""MiniLM-L6 on SST-5, trained on the labelled phrases of the training trees (159,274, every
training sentence among them), selected on the validation sentences and reported on the test
sentences, as many SST-5 papers train. configs/sst5_minilm.py is the sentence-level recipe.

    python -m train --config configs/sst5_minilm_phrases.py --workdir runs/sst5_minilm_phrases
"""

from configs import sst5_minilm


def get_config():
    config = sst5_minilm.get_config()
    config.data.train_split = "train_phrases"  # the local copy's; the hub's SST-5 has no phrases
    config.train.global_batch_size = 64
    config.train.num_epochs = 1
    config.train.eval_every_steps = 500  # 2,489 steps
    config.train.checkpoint_every_steps = 500
    config.train.log_every_steps = 50
    return config
