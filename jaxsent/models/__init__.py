"""Models: a Flax NNX BERT encoder with Hugging Face checkpoint import/export, and the
sentiment classifier built on it.

    from jaxsent.models import from_pretrained, SentimentClassifier, load_tokenizer
    encoder = from_pretrained("minilm-l6")
"""

from jaxsent.models import bert, bert_params
from jaxsent.models.bert import BertConfig, BertModel, BertOutput
from jaxsent.models.bert_params import CheckpointError
from jaxsent.models.classifier import (
    METADATA_FILE,
    POOLINGS,
    SentimentClassifier,
    load_tokenizer,
    masked_mean,
    read_metadata,
    save_pretrained,
    uses_hf_head,
)
from jaxsent.models.loading import from_pretrained

__all__ = [
    "bert",
    "bert_params",
    "BertConfig",
    "BertModel",
    "BertOutput",
    "CheckpointError",
    "from_pretrained",
    "METADATA_FILE",
    "POOLINGS",
    "SentimentClassifier",
    "load_tokenizer",
    "masked_mean",
    "read_metadata",
    "save_pretrained",
    "uses_hf_head",
]
