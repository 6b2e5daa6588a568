"""ModernBERT-base on full-length IMDB reviews (mean pooling), for a GPU or TPU slice.

The seed's own model: it fine-tuned `answerdotai/ModernBERT-base` with mean pooling (95.75% on
IMDB). Not runnable on this offline 2-core CPU (no weights: the hub is unreachable); with the
checkpoint in the Hugging Face cache or a local folder (`--config.model.name=PATH`) it runs as
is. The architecture alone is named `modernbert-base` (jaxsent.models.architectures) for plans.

Lengths: 1,536 tokens keep 99.93% of IMDB train reviews whole (98.2% fit in 1,024; the longest
has 3,047), measured with MiniLM's WordPiece tokenizer on the cleaned texts; ModernBERT's BPE
counts differ somewhat. The few longer reviews keep their head and tail. Length buckets fitted
to the data keep most batches far shorter than 1,536. Local layers attend 64 tokens each side,
so only the global third of the layers pays the full quadratic attention.

The optimiser settings are a starting point (the ModernBERT paper's fine-tuning range), not the
seed's, which are not recorded here.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "imdb"
    config.data.max_length = 1536
    config.data.truncation = "head_tail"
    config.data.validation_size = 2500
    config.data.num_buckets = 8
    config.model.name = "answerdotai/ModernBERT-base"
    config.model.pooling = "mean"
    config.model.dtype = "bfloat16"  # float32 parameters, bfloat16 compute
    # Activations of 22 layers at 1,536 tokens: recompute each layer in the backward pass.
    config.model.remat = "full"
    config.optim.learning_rate = 5e-5
    config.train.global_batch_size = 32
    config.train.eval_batch_size = 64
    config.train.num_epochs = 2
    config.train.eval_every_steps = 250
    config.train.checkpoint_every_steps = 250
    return config
