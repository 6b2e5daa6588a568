"""Peer: configs/sst5_minilm.py's recipe through HF Trainer, on the same examples and token ids.

What a PyTorch user coming from HF Trainer's ``num_labels`` would run for SST-5:
`transformers.BertForSequenceClassification` (MiniLM-L6, ``num_labels=5``: its pooler and a
five-way softmax head), the config's batch, learning rate, 10% warmup and linear decay, weight
decay 0.01 and epochs, length-grouped batches, the checkpoint with the best validation accuracy
(evaluated as often as the jaxsent run validates) restored at the end and scored on the test
sentences. The sentences are selected and tokenised by `jaxsent.data` with the run's classes,
so both systems see identical token ids. Modelled on ../shared/peers/hf_trainer_mainjob.py.

    JAXSENT_DATA_DIR=../shared/data .venv/bin/python bench/hf_trainer_sst5.py --seed 0 \\
        --config sst5_minilm_phrases --out runs/sst5_peer/seed_0

``--config`` names the jaxsent config whose recipe and examples it follows (``sst5_minilm``:
the training sentences; ``sst5_minilm_phrases``: the labelled phrases).

Needs the `bench` extra (accelerate) and torch (the test extra). Writes ``result.json`` (wall,
train and test seconds, test accuracy, macro-F1, NLL, ECE) and ``test_logits.npy`` /
``test_example_ids.npy`` (to compare with a jaxsent run on the same examples:
bench/sst5_compare.py), and prints the JSON line. Time it beside `python -m train --config
configs/sst5_minilm.py` on an idle machine, one after the other.
"""

import time

T0 = time.perf_counter()  # imports included, as for `python -m train`

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, os.getcwd())
import importlib  # noqa: E402

from jaxsent import data as data_lib  # noqa: E402
from jaxsent import multiclass_metrics  # noqa: E402
from jaxsent.models import bert_params, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for result.json and the logits")
    parser.add_argument("--config", default="sst5_minilm", help="a config module in configs/")
    parser.add_argument(
        "--rescore",
        help="a checkpoint folder this script's training saved (its best): score it on the test "
        "sentences without training, keeping --out's result.json timings",
    )
    args = parser.parse_args()
    cfg = importlib.import_module(f"configs.{args.config}").get_config()
    d, tc = cfg.data, cfg.train
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    known = data_lib.KNOWN_DATASETS["sst5"]
    classes = data_lib.ClassLabels(known.label_names, ordinal=known.ordinal)
    prep = dict(max_length=d.max_length, truncation=d.truncation, head_fraction=d.head_fraction)

    def split(name):
        raw = data_lib.load_raw("sst5", split=name)
        return data_lib.prepare(raw, tokenizer, split_name=name, classes=classes, **prep)

    train, validation, test = split(d.train_split), split(d.validation_split), split(d.eval_split)

    def hf(ds):
        ds = ds.select_columns(["input_ids", "label"])
        return ds.rename_column("label", "labels")

    model = transformers.BertForSequenceClassification.from_pretrained(
        args.rescore or bert_params.resolve(cfg.model.name), num_labels=classes.num_classes
    )
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    training = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=tc.global_batch_size,
        per_device_eval_batch_size=tc.eval_batch_size,
        learning_rate=cfg.optim.learning_rate,
        warmup_steps=cfg.optim.warmup_fraction,
        lr_scheduler_type="linear",
        weight_decay=cfg.optim.weight_decay,
        num_train_epochs=tc.num_epochs,
        train_sampling_strategy="group_by_length",
        eval_strategy="steps",
        eval_steps=tc.eval_every_steps,
        save_strategy="steps",
        save_steps=tc.eval_every_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        report_to=[],
        logging_steps=tc.log_every_steps,
        use_cpu=True,
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=hf(train),
        eval_dataset=hf(validation),
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    if args.rescore:
        with open(os.path.join(out, "result.json")) as f:
            trained = json.load(f)
    else:
        trainer.train()
    train_s = time.perf_counter() - start
    # Trainer's evaluation sampler follows train_sampling_strategy: under group_by_length it
    # groups the test set by length too, and predict() returns the logits in that order, not the
    # dataset's. Sequential order, so that logits[i] is test example i.
    trainer.args.train_sampling_strategy = "random"
    start = time.perf_counter()
    prediction = trainer.predict(hf(test))
    logits = prediction.predictions.astype(np.float32)
    if not np.array_equal(prediction.label_ids, np.asarray(test["label"])):
        raise RuntimeError("the test logits are not in the test set's order")
    test_s = time.perf_counter() - start
    labels = np.asarray(test["label"])
    values = multiclass_metrics.multiclass_classification_metrics(logits, labels, ordinal=True)
    np.save(os.path.join(out, "test_logits.npy"), logits)
    np.save(os.path.join(out, "test_example_ids.npy"), np.asarray(test["example_id"]))
    result = {
        "seed": args.seed,
        "config": args.config,
        "train_s": train_s,
        "test_s": test_s,
        "wall_s": time.perf_counter() - T0,
        **(
            {k: trained[k] for k in ("train_s", "wall_s")} | {"rescored": args.rescore}
            if args.rescore
            else {}
        ),
        **{k: float(values[k]) for k in ("accuracy", "macro_f1", "nll", "ece", "mae")},
        "n_examples": int(values["n_examples"]),
        "load": os.getloadavg(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
