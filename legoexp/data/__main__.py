"""``python -m legoexp.data DATA DIR``: a data set's two splits written as ``DIR/train.npz`` and ``DIR/test.npz``.

Each file holds ``images`` (N, 48, 48) uint8 and ``labels`` (N,), the format that ``--data DIR``
and ``python -m legoexp.predict`` read: the way to hand the generated test split to ``predict``,
to look at a data set with NumPy, or to turn the lab's pickles into plain arrays. Both splits are
read and checked before anything is written.
"""

import argparse
from pathlib import Path

import numpy as np

from legoexp.data import NPZ_FILES, SPLITS, load_split, open_source
from legoexp.errors import UserError
from legoexp.ops.command import run_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.data",
        description="Write a data set's train and test splits as DIR/train.npz and DIR/test.npz "
                    "(arrays 'images' (N, 48, 48) uint8 and 'labels' (N,)); existing files are replaced.")
    p.add_argument("data", metavar="DATA", help="synthetic, synthetic:SEED, or a directory of the lab's files or .npz files")
    p.add_argument("directory", metavar="DIR", help="where train.npz and test.npz go (made if missing)")
    args = p.parse_args(argv)
    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    source = open_source(args.data)
    splits = [load_split(source, split) for split in SPLITS]
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        path = out / NPZ_FILES[split.name]
        np.savez(path, images=split.images, labels=split.labels)
        print(f"wrote {path}: {len(split)} images and labels ({split.where})")
    return 0


if __name__ == "__main__":
    run_main(main)
