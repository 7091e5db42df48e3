"""Written once with bottleneck 0.1.0 before the layout step (commit 37ef089): a cache and a run."""
import sys, shutil
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_image
from bottleneck.images.index import build_index
from bottleneck.extract.run import ExtractOptions, extract
from bottleneck.heads.model import HeadConfig
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.heads.splits import SplitSpec

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
k = 0
for cls in ("bcc", "mel", "nv"):
    for i in range(6):
        write_image(out / "images" / cls / f"img{i}.jpg", seed=k, size=(40, 30)); k += 1
idx = build_index(out / "images")
extract(idx, ExtractOptions(backbone="vgg16", weights="none", image_size=32, views=1, cache=out / "cache.h5", progress=False))
head = HeadConfig(hidden=(16,), epochs=3, seed=0)
train_head_run(out / "cache.h5", head, RunOptions(out=out / "run", split=SplitSpec(0.5, 0.25, 0.25, 0), progress=False))
for p in ("curves.png", "confusion.png"):
    (out / "run" / p).unlink()
