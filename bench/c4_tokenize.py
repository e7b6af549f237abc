"""C4 input pipeline for GPT-J: tokens/s of read + tokenize + pack, against its floor.

Writes a synthetic C4 folder with ``mlbench synth gptj`` (real file names, gzipped JSON lines,
a byte-level BPE tokenizer trained at synth time) unless ``--data-dir`` points at real C4 with
a tokenizer folder, then measures on one core, interleaved, medians:

- ``read``: gunzip + JSON decode of every document (the floor: no tokenizer);
- ``pipeline``: ``benchmarks.gptj.data`` as training uses it: read, tokenize, append EOS, pack
  into ``--seq-len`` windows.

    python bench/c4_tokenize.py                      # synthetic C4, seq_len 2048
    python bench/c4_tokenize.py --data-dir /path/to/c4 --files 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.gptj.data import (
    TRAIN_PATTERN,
    list_c4_files,
    load_tokenizer,
    pack,
    read_documents,
    synthesize,
    tokenize,
)


def read_only(files: list[Path]) -> int:
    return sum(len(text) for path in files for text in read_documents(path))


def pipeline(files: list[Path], tokenizer_dir: Path, seq_len: int) -> int:
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = (text for path in files for text in read_documents(path))
    return sum(len(window) - 1 for window in pack(tokenize(tokenizer, texts), seq_len))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="C4 folder (default: synthesize one)")
    parser.add_argument("--samples", type=int, default=20000, help="synthetic documents")
    parser.add_argument("--files", type=int, default=0,
                        help="C4 training files to read (default: all)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp)
            synthesize(data_dir, args.samples, 0)
        files = list_c4_files(data_dir, TRAIN_PATTERN)[: args.files or None]
        tokenizer_dir = data_dir / "tokenizer"
        tokens = pipeline(files, tokenizer_dir, args.seq_len)
        seconds: dict[str, list[float]] = {"read": [], "pipeline": []}
        for repeat in range(args.repeats):
            for name in (["read", "pipeline"] if repeat % 2 == 0 else ["pipeline", "read"]):
                started = time.perf_counter()
                if name == "read":
                    read_only(files)
                else:
                    pipeline(files, tokenizer_dir, args.seq_len)
                seconds[name].append(time.perf_counter() - started)
    read_s, pipeline_s = (statistics.median(seconds[n]) for n in ("read", "pipeline"))
    print(f"{len(files)} C4 file(s), {tokens:,} packed tokens, seq_len {args.seq_len}, "
          f"1 tokenizer thread, {args.repeats} interleaved repeats, medians")
    print("| stage | seconds | tokens/s |")
    print("|---|---|---|")
    print(f"| read (gunzip + JSON, floor) | {read_s:.3f} | {tokens / read_s:,.0f} |")
    print(f"| read + tokenize + pack | {pipeline_s:.3f} | {tokens / pipeline_s:,.0f} |")


if __name__ == "__main__":
    main()
