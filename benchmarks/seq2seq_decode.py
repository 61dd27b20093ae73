"""Seq2seq decoding speed: torch eager against ONNX Runtime, the same model, the same search.

    .venv/bin/python -m benchmarks.seq2seq_decode RUN_DIR DATA [--words 2000] [--batch 64] [--threads 2]

RUN_DIR is a seq2seq training run (e.g. runs/demo/g2p from `make demo`), DATA a pair file whose
sources are decoded (e.g. runs/demo/cmudict/cmudict-test.tsv). Both sides run the shared NumPy
search (toolkit.core.search) batched across inputs: one decoder call per output step for every
live hypothesis of the batch; torch runs the trained float32 model in eval mode, ONNX Runtime
`encoder.onnx` + `decoder_step.onnx` built from the same weights. Greedy and beam 5, side by
side in one run; prints words per second and how many outputs agree.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from toolkit.core.data import load_file
from toolkit.core.search import Search
from toolkit.export.seq2seq_graph import build_decoder_step_graph, build_encoder_graph
from toolkit.models.seq2seq import translate
from toolkit.runtime.providers import make_session
from toolkit.runtime.seq2seq import Translator
from toolkit.train.checkpoint import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("data")
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg, inp, out = load_model(args.run_dir)
    sources = [ex.inputs for ex in load_file(args.data, cfg, inp, out, require_target=False).examples][: args.words]
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    translator = Translator(
        make_session(build_encoder_graph(weights, cfg.model, inp, out).SerializeToString(), "cpu", args.threads),
        make_session(build_decoder_step_graph(weights, cfg.model, inp, out).SerializeToString(), "cpu", args.threads),
    )
    rows = []
    for name, search in (("greedy", Search(beam=1)), ("beam 5", Search(beam=5, length_penalty=0.6))):
        timed = {}
        for side, run in (
            ("torch eager", lambda s=search: translate(model, sources, s, batch_size=args.batch)),
            ("ONNX Runtime", lambda s=search: translator.translate(sources, s, batch_size=args.batch)),
        ):
            warm = sources[: args.batch]
            translate(model, warm, search) if side == "torch eager" else translator.translate(warm, search)
            started = time.perf_counter()
            timed[side] = (run(), time.perf_counter() - started)
        same = sum(
            a[0].tokens == b[0].tokens for a, b in zip(timed["torch eager"][0], timed["ONNX Runtime"][0], strict=True)
        )
        for side, (_, seconds) in timed.items():
            rows.append({"search": name, "side": side, "words_per_s": len(sources) / seconds, "seconds": seconds})
        rows.append({"search": name, "side": "agreement", "same_best": same, "words": len(sources)})
    print(f"{len(sources)} words, batch {args.batch}, {args.threads} threads, {cfg.model.cell} x{cfg.model.num_layers}")
    for row in rows:
        if row["side"] == "agreement":
            print(f"  {row['search']:<7} best output identical on {row['same_best']}/{row['words']} words")
        else:
            print(f"  {row['search']:<7} {row['side']:<13} {row['words_per_s']:8.0f} words/s ({row['seconds']:.2f} s)")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
