"""Fingerprints for the rows of a cache extracted before them: rerunning the same `extract` command decodes those
images (the pipeline's own decode, the backbone's pixels) and journals each row's fingerprint, no backbone pass.

    cached rows without a fingerprint -> tf.data decode + perceptual hash -> journaled batch (has_features False,
    the vector kept) -> commit, crash-safe as every write of the cache

New rows get their fingerprint in the backbone pass itself (`run._run_backbone`, `ray_engine._decode`).
"""

from __future__ import annotations

from ..cache import CacheConfig, CacheWriter
from ..images import Entry, inference_batches
from ..util import progress_bar
from .forward import entry_row


def missing_fingerprints(entries: list[Entry], hashes, existing: dict, view_todo: dict) -> list[tuple[Entry, str]]:
    """Cached images (same id and bytes) whose row has no fingerprint (a cache extracted before fingerprints) and
    that no backbone pass of this run decodes anyway."""
    viewed = {e.image_id for items in view_todo.values() for e, _ in items}
    out = []
    for entry, (sha, err) in zip(entries, hashes):
        old = existing.get(entry.image_id)
        if not err and old is not None and old["sha256"] == sha and not old["phash"] and entry.image_id not in viewed:
            out.append((entry, sha))
    return out


def fingerprint_only(writer: CacheWriter, todo: list[tuple[Entry, str]], config: CacheConfig, opts,
                     summary) -> None:
    """Add the missing fingerprints of cached rows by decoding their images (no backbone): each batch journaled and
    committed like any other, rows refreshed in place with their vectors kept."""
    if not todo:
        return
    bar = progress_bar(total=len(todo), desc="fingerprints", unit="img", enabled=opts.progress, smoothing=0.1)
    done = 0
    for pixels, w, h, err, phash in inference_batches([str(e.path) for e, _ in todo], config.input_size,
                                                      opts.batch_size, fingerprints=True):
        n, reasons, phash, w, h = int(pixels.shape[0]), err.numpy(), phash.numpy(), w.numpy(), h.numpy()
        rows = [entry_row(entry, sha, (int(w[j]), int(h[j])), has_features=False, phash=phash[j])
                for j, (entry, sha) in enumerate(todo[done:done + n]) if not reasons[j]]
        if rows:  # an image that no longer decodes keeps its row as it is
            writer.write_batch(rows, None)
        summary.fingerprinted += len(rows)
        done += n
        bar.update(n)
    bar.close()
