"""Base configuration: every field the trainer reads, with its default.

Each named config in this folder starts from `get_config()` here and changes what it needs.
Any field can be overridden on the command line: `--config.optim.learning_rate=3e-5`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "imdb"  # 'imdb', 'sst2', 'rotten_tomatoes', 'sst5', or a file/folder (local, gs://)
    data.data_dir = ""  # overrides $JAXSENT_DATA_DIR when set
    data.text_column = ""  # '' = the dataset's known column (text / sentence)
    data.label_column = ""
    # The classes, in class-id order, comma-separated ('very negative,negative,neutral,...');
    # '' = the data set's own (sst5), else 0/1 binary labels, else the distinct integer labels
    # in increasing order or the distinct label strings in sorted order (the run says which).
    data.label_names = ""
    data.ordinal = False  # ordered classes (ratings): adds mean absolute error, within-one acc.
    data.train_split = "train"
    data.eval_split = "test"  # used once, for the final report
    data.validation_size = 0.1  # fraction (or count) of train held out for model selection
    # A split of the data set to select the model on instead (e.g. SST-5's 'validation'); then
    # every train row is trained on and validation_size is not used.
    data.validation_split = ""
    data.train_size = 0  # 0 = all remaining train examples; else a stratified subset of this size
    data.eval_size = 0  # 0 = the whole eval split; else a fixed stratified sample of this size
    data.eval_sample_seed = 0  # the eval sample's seed: the same examples for every training seed
    # A data set with one split only (a single file) is divided: this fraction (or count) of it,
    # stratified and fixed by eval_sample_seed, is held out for the final evaluation.
    data.eval_holdout = 0.2
    # Other data sets evaluated from the best checkpoint at the end: 'name[:split],...' (e.g.
    # 'rotten_tomatoes:all'); reports in extra_evals/<name>-<split>/ and eval_results.json.
    data.extra_evals = ""
    data.max_length = 256
    # 'head' keeps the first max_length tokens; 'head_tail' the first head_fraction of the budget
    # and the end of the text (where reviews often state their verdict).
    data.truncation = "head"
    data.head_fraction = 0.25
    data.num_buckets = 8  # padded lengths fitted to the train lengths: one compiled shape each
    data.clean_markup = True
    data.on_bad_rows = "error"  # or 'filter' (filtered counts are reported)

    config.model = model = ml_collections.ConfigDict()
    model.name = "minilm-l6"  # short name, local folder, or hub id of a BERT-family checkpoint
    model.pooling = "mean"  # 'cls' | 'mean' | 'cls_mean'
    # Classes of the head: 0 = as many as the data has. Two classes get one logit (sigmoid),
    # K > 2 get K logits (softmax).
    model.num_labels = 0
    model.dropout_rate = 0.1
    model.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
    # Encoder layout: the same function and losses, other memory and compile time (docs/tpu.md).
    # remat: what the backward pass recomputes: 'none' | 'full' (each layer from its input) |
    # 'dots' (keeps the matmul outputs, recomputes attention scores and elementwise ops).
    model.remat = "none"
    # scan_layers: the layers as one scan over stacked parameters (one layer body to compile);
    # checkpoints hold the stacked layout, exports stay per layer (Hugging Face).
    model.scan_layers = False

    config.loss = loss = ml_collections.ConfigDict()
    # Plain BCE: in the loss study (docs/study.md) no seed term beat it, and the seed's focal loss
    # lost 4.9 points on SST-2 and 5.9 on Rotten Tomatoes. Any other loss by name or preset:
    # config.loss.update(jaxsent.losses.LOSS_PRESETS[name]) sets every field.
    loss.name = "bce"  # 'bce' | 'weighted' | 'focal' | 'sentiment' (every term switchable)
    loss.gamma_focal = 0.0
    loss.label_smoothing_epsilon = 0.0
    loss.min_length_weight = 0.1
    loss.stop_gradient_weights = False
    # Read by 'sentiment' only ('weighted' and 'focal' always weight by both).
    loss.length_weighting = False
    loss.confidence_weighting = False

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 5e-5
    optim.schedule = "linear"  # 'linear' | 'cosine' | 'constant' (after warmup)
    optim.warmup_steps = -1  # -1 = use warmup_fraction
    optim.warmup_fraction = 0.1
    optim.weight_decay = 0.01
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.grad_clip_norm = 1.0
    optim.max_consecutive_nonfinite = 10

    config.train = train = ml_collections.ConfigDict()
    train.global_batch_size = 32
    train.eval_batch_size = 64
    train.num_epochs = 1
    train.num_steps = 0  # 0 = num_epochs over the train set; else stop after this many steps
    train.log_every_steps = 10
    train.eval_every_steps = 0  # 0 = once per epoch
    train.checkpoint_every_steps = 200
    train.best_metric = "accuracy"
    train.best_mode = "max"
    train.max_checkpoints = 2
    # True: compile every bucket shape on a background thread while the first steps run, instead
    # of pausing training at each new shape (same executables, same numbers). Off by default: on
    # 2 CPU cores the compiles slow the steps beside them as much as they save (`make train`
    # 1,082 s with it, 1,076 s without, docs/benchmarks.md); on an accelerator the host's cores
    # idle while the device steps, which is where it can pay (not measured here).
    train.compile_ahead = False
    # > 0: each train step runs its batch as micro-batches of this many rows and sums their
    # gradients (the same gradient for the 'bce' loss; the seed's losses normalise over the whole
    # batch and refuse it). 0 = the whole batch at once.
    train.micro_batch_size = 0

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # -1 = all devices not used by the model axis
    mesh.model = 1
    mesh.strategy = "dp"  # parameter sharding rules: 'dp' (replicated), 'fsdp', 'tp'
    return config
