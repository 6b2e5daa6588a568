"""Models: Flax NNX encoders (BERT, RoBERTa, XLM-RoBERTa, ModernBERT) with Hugging Face
checkpoint import/export, and the sentiment classifier built on them.

    from jaxsent.models import from_pretrained, SentimentClassifier, load_tokenizer
    encoder = from_pretrained("minilm-l6")
"""

from jaxsent.models import bert, bert_params, checkpoint, modernbert, modernbert_params
from jaxsent.models.bert import BertConfig, BertModel, BertOutput
from jaxsent.models.checkpoint import CheckpointError
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
from jaxsent.models.loading import SUPPORTED_MODEL_TYPES, from_pretrained
from jaxsent.models.modernbert import ModernBertConfig, ModernBertModel

__all__ = [
    "bert",
    "bert_params",
    "checkpoint",
    "modernbert",
    "modernbert_params",
    "ModernBertConfig",
    "ModernBertModel",
    "SUPPORTED_MODEL_TYPES",
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
