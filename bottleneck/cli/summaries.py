"""What each command prints: its result as lines of text, so the CLI (and the demo, which runs the same
steps) only echoes them. Everything a command writes to disk is its real output; these are the short summaries."""

from __future__ import annotations

import json
from pathlib import Path

from ..cache import ADD_FINGERPRINTS, MergeResult
from ..extract import ExtractSummary
from ..heads import describe
from ..images import DatasetIndex
from ..models import ExportResult, FineTuneResult, PredictResult
from ..runs import CompareResult, EvalResult, RunResult, SweepResult, format_leaderboard
from ..stats import format_table
from ..util import CLASH_NOTE

INFO_CONFIG_KEYS = ("backbone", "weights", "input_size", "pooling", "preprocessing", "precision", "xla", "dtype",
                    "num_features")
INFO_ATTR_KEYS = ("dataset", "source", "root", "created", "updated", "schema_version")


def _more(items: list, shown: int, tail: str) -> list[str]:
    return [f"  ... and {len(items) - shown} more{tail}"] if len(items) > shown else []


def extract_lines(s: ExtractSummary, index: DatasetIndex) -> list[str]:
    lines = [f"cache: {s.cache}",
             f"images: {s.total} indexed, {s.extracted} extracted, "
             + (f"{s.recovered} recovered from the journal, " if s.recovered else "")
             + f"{s.already_cached} already cached, "
             f"{s.reused} reused (same bytes), {len(s.failed)} failed"]
    if s.extracted:
        steady = f", {s.steady_images_per_s:.1f} images/s after the first batch" if s.steady_images else ""
        setup = "starting Ray" if s.engine == "ray" else "building the backbone"
        lines.append(f"time: {s.seconds:.1f} s ({s.build_seconds:.1f} s {setup}), "
                     f"{s.images_per_s:.1f} images/s{steady}; computed in {s.precision}"
                     + (" with XLA" if s.xla else "")
                     + (f"; engine ray, {s.workers} backbone worker{'s' if s.workers > 1 else ''}"
                        if s.engine == "ray" else "")
                     + (f"; {len(s.devices)} replicas ({', '.join(s.devices)})" if len(s.devices) > 1 else ""))
    lines.append(f"rows in cache: {s.rows}" + (f", {s.views} augmented views each" if s.views else ""))
    lines += _identity_lines(s)
    if s.views_added:
        lines.append(f"views added to {s.views_added} cached images (their plain vectors kept) in {s.seconds:.1f} s")
    if s.fingerprinted:
        lines.append(f"fingerprints added to {s.fingerprinted} cached images (decoded only, their vectors kept)")
    if s.rows_without_image:
        lines.append(f"metadata rows with no image: {s.rows_without_image} "
                     f"(e.g. {', '.join(index.rows_without_image[:3])})")
    if s.images_without_row:
        lines.append(f"images with no metadata row: {s.images_without_row} "
                     f"(e.g. {', '.join(index.images_without_row[:3])})")
    lines += [f"note: {note}" for note in index.notes]
    if index.skipped_paths:
        lines.append(f"skipped while indexing: {len(index.skipped_paths)} (symlinks not followed, special files)")
        lines += [f"  skipped: {path}: {reason}" for path, reason in index.skipped_paths[:10]]
        lines += _more(list(index.skipped_paths), 10, "")
    lines += [f"  failed: {path}: {reason}" for path, reason in s.failed[:10]]
    return lines + _more(s.failed, 10, f" (bottleneck info {s.cache})")


def _identity_lines(s: ExtractSummary) -> list[str]:
    """The cache's dataset identity: adopted by an older cache, a dataset appended, labels and groups changed."""
    note, lines = s.identity, []
    if note is None:
        return lines
    if note.adopted:
        lines.append("identity: the cache recorded no dataset; it now records this one's root and CSV")
    if note.appended:
        lines.append(f"appended: the images of {note.appended} (--append; recorded in the cache)")
    for count, what, shown in ((note.labels_changed, "label", note.labels_shown),
                               (note.groups_changed, "group", note.groups_shown)):
        if count:
            lines.append(f"{count} {what}{'s' if count > 1 else ''} changed: {', '.join(shown)}"
                         + (", ..." if count > len(shown) else "") + " (recorded in the cache)")
    return lines


def _identity_info(attrs: dict) -> list[str]:
    """`info`'s lines for the identity (what the cache holds) and the relabels it recorded."""
    ident = json.loads(attrs.get("identity") or "null")
    if not ident:
        return ["  identity: not recorded (a cache from before it: the next extract into it records its dataset)"]
    csv = f", metadata {ident['metadata']} (sha256 {ident['metadata_sha256'][:12]})" if ident["metadata"] else ""
    csv += "".join(f" + {extra}" for extra in ident.get("metadata_extra", []))  # CSVs joined on the image id
    lines = [f"  identity: {ident['root']} (source {ident['source']}{csv})"]
    lines += [f"  appended: {a['root']} (source {a['source']}" + (f", metadata {a['metadata']}" if a["metadata"]
                                                                    else "") + f") on {a.get('at', '?')}"
              for a in ident.get("appended", [])]
    for r in json.loads(attrs.get("relabels") or "[]"):
        lines.append(f"  relabelled on {r['at']}: {r['labels_changed']} labels, {r['groups_changed']} groups changed"
                     + (f" ({', '.join(r['first'][:3])}{', ...' if len(r['first']) > 3 else ''})" if r["first"]
                        else ""))
    return lines


def _on_off(value):
    return ("on" if value else "off") if isinstance(value, bool) else value


def info_lines(cache: Path, d: dict) -> list[str]:
    """`d` is `describe_cache(cache)`."""
    lines = [f"cache: {cache}"]
    lines += [f"  {key}: {_on_off(d['config'][key])}" for key in INFO_CONFIG_KEYS]
    lines += [f"  {key}: {d['attrs'][key]}" for key in INFO_ATTR_KEYS if d["attrs"].get(key) not in (None, "")]
    lines += _identity_info(d["attrs"]) + _shard_lines(d["attrs"])
    lines.append(f"rows: {d['rows']} ({d['groups']} groups)" if d["groups"] else f"rows: {d['rows']}")
    if d["views"]:
        lines.append(f"views: {d['views']} per image besides the plain one ({', '.join(d['view_names'])}); "
                     f"{d['rows_with_views']} rows complete")
    if d.get("meta_columns"):
        lines.append("metadata columns (rows with a value): "
                     + ", ".join(f"{c} ({n})" for c, n in d["meta_columns"].items()))
    lines.append(_fingerprint_line(d))
    lines.append("classes:")
    lines += [f"  {name}: {count}" for name, count in d["class_counts"].items()]
    if d["unlabeled"]:
        lines.append(f"  (unlabeled): {d['unlabeled']}")
    if d["pending_batches"] and d.get("writer_pid") is not None:
        lines.append(f"pending: {d['pending_batches']} batches journaled by a running extract (pid "
                     f"{d['writer_pid']}), not yet committed")
    elif d["pending_batches"]:
        lines.append(f"pending: {d['pending_batches']} journaled batches from an interrupted run; "
                     "rerun extract to complete the cache")
    lines.append(f"failed images: {len(d['failed'])}")
    lines += [f"  {path}: {reason}" for path, reason in d["failed"][:20]]
    return lines + _more(d["failed"], 20, "") + [f"note: {CLASH_NOTE}"]


def _fingerprint_line(d: dict) -> str:
    """How many rows have a perceptual fingerprint (the near-duplicate checks use them), and how to add the rest."""
    have = d.get("fingerprints")
    if have is None:
        return f"fingerprints: none (extracted before fingerprints); {ADD_FINGERPRINTS}"
    if have < d["rows"]:
        return f"fingerprints: {have} of {d['rows']} rows; {ADD_FINGERPRINTS.replace('add them', 'add the rest')}"
    return f"fingerprints: every row ({have})"


def _shard_lines(attrs: dict) -> list[str]:
    """Which shards of which index a cache holds (nothing for a whole extraction or an older cache)."""
    index = f"of index {str(attrs.get('index_fingerprint', ''))[:12]} ({attrs.get('index_images', '?')} images)"
    lines = []
    if attrs.get("shard"):
        lines.append(f"  shard: {attrs['shard']} {index}")
    elif attrs.get("shards"):
        missing = json.loads(attrs.get("missing_shards") or "[]")
        lines.append(f"  shards: {', '.join(json.loads(attrs['shards']))} {index}"
                     + (f"; missing {', '.join(missing)}" if missing else ", all present"))
    if attrs.get("virtual"):
        lines.append(f"  virtual: rows read from {', '.join(json.loads(attrs.get('virtual_sources', '[]')))} "
                     "(relative to the cache)")
    return lines


def merge_lines(r: MergeResult) -> list[str]:
    how = " (virtual datasets over the shard files)" if r.virtual else ""
    lines = [f"merged {r.caches} caches into {r.out}{how}: {r.rows} rows"]
    if r.shards:
        lines.append(f"shards: {', '.join(r.shards)} of index {r.fingerprint[:12]}")
    if r.missing:
        lines.append(f"missing shards: {', '.join(r.missing)} (--allow-partial): their images are not in {r.out}")
    return lines


def class_map_lines(record: dict | None) -> list[str]:
    """The task a --class-map defined: each target's source classes and images, and what was dropped."""
    if not record:
        return []
    return [f"class map {record['spec']!r}:"] + [f"  {line}" for line in describe(record)]


def train_head_lines(r: RunResult) -> list[str]:
    sizes = ", ".join(f"{s} {r.split_sizes[s]['images']}" for s in ("train", "val", "test"))
    oof = {"out-of-fold": r.metrics["oof"]["metrics"]} if "oof" in r.metrics else {}  # --folds K
    lines = class_map_lines(r.class_map) + [
             f"split: {sizes}; best epoch {r.best_epoch}, {r.seconds:.1f} s of training"
             + (f"; {r.metrics['protocol']}" if oof else ""),
             format_table({s: r.metrics[s] for s in ("val", "test") if s in r.metrics} | oof)]
    for name, m in r.metrics.get("views_comparison", {}).items():
        t = m["test"]
        lines.append(f"  {name}: test balanced acc {t['balanced_accuracy']:.3f}, accuracy {t['accuracy']:.3f}")
    shown = ("test", r.metrics["test"]) if "test" in r.metrics else ("out-of-fold", r.metrics["oof"]["metrics"])
    return lines + decision_lines(r.metrics.get("decision_rule"), shown[1], shown[0]) + [
        f"run: {r.run_dir}  (report: {r.run_dir / 'report.md'})"]


def decision_lines(rule: dict | None, m: dict, split: str) -> list[str]:
    """The decision rule that made the predicted classes, and how often it is not the most probable class."""
    differs = m.get("not_most_probable")
    if not rule or not differs:
        return []
    return [f"decision rule: {rule['rule']} (--decision); {differs['rows']} of {m['n']} {split} predictions "
            f"({differs['share']:.1%}) are not the most probable class"]


def evaluate_lines(r: EvalResult) -> list[str]:
    lines = [f"note: {note}" for note in r.notes]
    if r.overlap is not None:
        lines.append(r.overlap.message(r.cache.name))
    if r.class_map:
        lines += class_map_lines(r.class_map)
    elif r.unmapped:
        lines.append("classes of the cache the run does not know (left out): "
                     + ", ".join(f"{k} ({v:,} images)" for k, v in r.unmapped.items()))
    return lines + [format_table({"external" if r.external else "test": r.metrics}),
                    f"written: {r.out_dir}  (report: {r.out_dir / 'report.md'})"]


def sweep_lines(r: SweepResult, n_configs: int, folds: int, metric: str) -> list[str]:
    lines = class_map_lines(r.class_map) + [
        f"{n_configs} configurations: {r.computed} trained, {r.skipped} already done "
        f"({'%d-fold CV on train+val' % folds if folds else 'scored on the val split'})",
        format_leaderboard(r.leaderboard, metric, top=20),
        f"leaderboard: {r.out / 'leaderboard.csv'}"]
    if r.best_dir:
        lines += [f"winner: {r.selection}",
                  f"\nbest ({r.winner}) retrained on train (early-stopped and calibrated on val), "
                  "evaluated once on test:",
                  format_table({"test": r.best_metrics["test"]}),
                  f"best run: {r.best_dir}  (report: {r.best_dir / 'report.md'})"]
    return lines


def fine_tune_lines(r: FineTuneResult) -> list[str]:
    shown = {"head only (test)": r.metrics["head_only"]["test"]} if "test" in r.metrics["head_only"] else {}
    lines = [f"best epoch {r.best_epoch} of {r.epochs_run}, {r.seconds:.1f} s of training in {r.precision}",
             format_table({**shown, "fine-tuned (val)": r.metrics["val"], "fine-tuned (test)": r.metrics["test"]})]
    lines += [f"  unreadable ({f['stage']}, {f['split']}): {f['path']}: {f['reason']}" for f in r.failed[:10]]
    lines += _more(r.failed, 10, " (config.json lists them)")
    return lines + [f"run: {r.run_dir}  (report: {r.run_dir / 'report.md'})"]


def predict_lines(r: PredictResult, out: Path, tta: bool) -> list[str]:
    ok = r.frame[r.frame["error"] == ""]
    lines = [f"{len(ok)} images predicted{' (8-view TTA)' if tta else ''}, {len(r.failed)} unreadable; "
             + (f"backbone computed in {r.precision}" if r.precision != "as saved" else "model run as saved")]
    width = min(60, max([len(p) for p in ok["path"].head(20)] + [4]))
    lines += [f"  {row['path'][-width:]:<{width}}  {row['predicted']}  {row['p_' + row['predicted']]:.3f}"
              for _, row in ok.head(20).iterrows()]
    if len(ok) > 20:
        lines.append(f"  ... and {len(ok) - 20} more")
    lines += [f"  unreadable: {path}: {reason}" for path, reason in r.failed[:10]]
    lines += _more(r.failed, 10, " (see the error column)")
    rule = r.rule or {}
    if rule.get("rule"):
        lines.append(f"decision rule: {rule['rule']} (the run's --decision): {rule['text']}")
    if rule.get("temperature") is not None:
        lines.append("probabilities calibrated by the run (temperature scaling)" if rule["calibrated"] else
                     "probabilities as the head gives them (--no-calibrate)")
    if rule.get("threshold") is not None:
        flagged = int(ok[f"{rule['positive']}_at_threshold"].astype(bool).sum())  # readable rows: True or False
        lines.append(f"operating point: {rule['positive']} flagged when p_{rule['positive']} >= "
                     f"{rule['threshold']:.4f} (chosen on the run's validation split): {flagged} of {len(ok)} images "
                     f"flagged (column {rule['positive']}_at_threshold)")
    return lines + [f"written: {out}"]


def export_lines(r: ExportResult) -> list[str]:
    return [f"parity: worst probability difference {r.worst_difference:.2g} on {r.images_checked} cached "
            f"images (tolerance {r.tolerance})",
            f"exported: {r.out} ({', '.join(r.files)})"]


def compare_lines(r: CompareResult) -> list[str]:
    """The rows compared, the table of paired differences, what survives Holm's correction, and where it went."""
    rows = r.record["rows"]
    lines = [f"compared on {rows['images']} images ({rows['lesions']} lesions, {rows['positives']} "
             f"{r.record['positive']}) of {', '.join(x['label'] for x in r.record['runs'])}"]
    if rows["intersect"]:
        lines.append(f"note: --intersect: only the images every run scored ({rows['first_difference']['counts']} "
                     f"for {rows['first_difference']['a']} vs {rows['first_difference']['b']})")
    return lines + r.table + [r.survivors, f"written: {r.out_dir}  (report: {r.out_dir / 'comparison.md'})"]
