"""MiniLM-L6 on SST-5 (five ordered classes, sentence level): the K-class recipe.

Trains on the 8,544 training sentences, selects the checkpoint on the 1,101 validation
sentences (the standard dev split) and reports on the 2,210 test sentences, with the K-class
metrics (macro-F1, NLL, top-label and classwise ECE, and for the ordered classes the mean
absolute error and accuracy within one class). Results in docs/benchmarks.md.

    python -m train --config configs/sst5_minilm.py --workdir runs/sst5_minilm
"""

from configs import default


def get_config():
    config = default.get_config()
    data = config.data
    data.name = "sst5"  # classes 0 'very negative' .. 4 'very positive' (ordered)
    data.train_split = "train"
    data.validation_split = "validation"
    data.eval_split = "test"
    data.max_length = 80  # the longest sentence has 66 tokens: nothing is truncated
    data.num_buckets = 4

    config.model.name = "minilm-l6"
    config.model.pooling = "mean"

    config.loss.name = "bce"  # softmax cross-entropy for K classes

    optim = config.optim
    optim.learning_rate = 1e-4
    optim.warmup_fraction = 0.1
    optim.schedule = "linear"

    train = config.train
    train.global_batch_size = 32
    train.eval_batch_size = 128
    train.num_epochs = 4
    train.eval_every_steps = 134  # twice an epoch (267 steps)
    train.checkpoint_every_steps = 134
    train.log_every_steps = 20
    train.best_metric = "accuracy"
    return config
