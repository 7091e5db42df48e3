"""Run directories on real folders: staged writing published whole or not at all, refusing to overwrite,
reading a run back, the shared artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.runs.directory import (
    check_free,
    predictions_frame,
    publish,
    read_config,
    stage,
    staged,
    staging_dir,
    write_history,
    write_predictions,
)


def make_run(path, text="old"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"run": text}))
    (path / "only-in-old.txt").write_text(text)
    return path


def test_staged_publishes_a_new_run_on_success(tmp_path):
    out = tmp_path / "runs" / "new"
    with staged(out, overwrite=False) as tmp:
        assert tmp == staging_dir(out) == tmp_path / "runs" / ".new.tmp" and tmp.is_dir()
        assert not out.exists()  # nothing is visible under the final name while it is written
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").read_text() == "{}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["new"]


def test_staged_replaces_an_older_run_only_once_the_new_one_is_whole(tmp_path):
    out = make_run(tmp_path / "run")
    with staged(out, overwrite=True) as tmp:
        (tmp / "config.json").write_text(json.dumps({"run": "new"}))
        assert read_config(out) == {"run": "old"}  # the old run stays readable until the new one is done
    assert read_config(out) == {"run": "new"}
    assert not (out / "only-in-old.txt").exists()  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .run.tmp, no .run.old


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_inside_the_block_leaves_the_old_run_untouched(tmp_path, error):
    out = make_run(tmp_path / "run")
    with pytest.raises(type(error)):
        with staged(out, overwrite=True) as tmp:
            (tmp / "config.json").write_text(json.dumps({"run": "half"}))
            raise error
    assert read_config(out) == {"run": "old"} and (out / "only-in-old.txt").read_text() == "old"
    assert not staging_dir(out).exists() and not (tmp_path / ".run.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with staged(fresh, overwrite=False):
            raise ValueError("nothing published")
    assert not fresh.exists() and not staging_dir(fresh).exists()


def test_check_free_refuses_an_existing_directory_without_overwrite(tmp_path):
    out = make_run(tmp_path / "run")
    with pytest.raises(InputError) as err:
        check_free(out, overwrite=False)
    assert str(out) in str(err.value) and "--overwrite" in str(err.value) and "already exists" in str(err.value)
    assert str(err.value).startswith(f"run directory {out}")
    with pytest.raises(InputError, match=f"^sweep directory {out} already exists"):
        check_free(out, overwrite=False, what="sweep directory")
    check_free(out, overwrite=True)
    check_free(tmp_path / "absent", overwrite=False)
    with pytest.raises(InputError, match="--overwrite"):
        with staged(out, overwrite=False):
            pytest.fail("the block must not run")
    assert read_config(out) == {"run": "old"} and not staging_dir(out).exists()


def test_stage_discards_a_leftover_of_a_crashed_run_and_publish_renames(tmp_path):
    out = tmp_path / "run"
    leftover = staging_dir(out)
    leftover.mkdir()
    (leftover / "half-written.csv").write_text("x")
    tmp = stage(out, overwrite=False)
    assert tmp == leftover and tmp.is_dir() and not list(tmp.iterdir())
    (tmp / "a.txt").write_text("a")
    publish(tmp, out)
    assert (out / "a.txt").read_text() == "a" and not tmp.exists()


def test_an_older_run_set_aside_by_a_kill_mid_publish_comes_back(tmp_path):
    """Killed between publish's two renames: the older run waits as .run.old, and the next reader or writer of
    that run directory puts it back."""
    out = make_run(tmp_path / "run")
    out.rename(tmp_path / ".run.old")  # where publish's first rename put it
    assert read_config(out) == {"run": "old"} and not (tmp_path / ".run.old").exists()
    out.rename(tmp_path / ".run.old")
    with pytest.raises(InputError, match="already exists"):
        stage(out, overwrite=False)  # back in place, so it is protected as any existing run
    assert (out / "only-in-old.txt").read_text() == "old"


def test_read_config_refuses_a_folder_without_config_json(tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(InputError, match="not-a-run is not a run directory \\(no config.json there\\)"):
        read_config(folder)
    with pytest.raises(InputError, match="no config.json"):
        read_config(tmp_path / "missing")
    (folder / "config.json").write_text(json.dumps({"epochs_run": 3}))
    assert read_config(str(folder)) == {"epochs_run": 3}


def test_write_history_has_a_one_based_epoch_column(tmp_path):
    history = {"loss": [0.9, 0.5, 0.4], "accuracy": [0.5, 0.7, 0.8], "val_loss": [1.0, 0.8, 0.9]}
    write_history(tmp_path / "history.csv", history)
    df = pd.read_csv(tmp_path / "history.csv")
    assert list(df.columns) == ["epoch", "loss", "accuracy", "val_loss"]
    assert df["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(df["val_loss"], history["val_loss"])


def test_predictions_frame_columns(tmp_path):
    data = load_cache(feature_cache(tmp_path / "c.h5", counts={"bcc": 2, "mel": 2}, dim=4))
    data.labels[1] = -1  # an unlabeled row
    split = np.array(["train", "test", "test", "val"], dtype=object)
    proba = np.array([[0.2, 0.8], [0.9, 0.1]])
    df = predictions_frame(data, split, proba, np.array([1, 2]), data.class_names)
    assert list(df.columns) == ["image_id", "path", "group", "split", "true", "predicted", "decision_rule",
                                "most_probable", "p_bcc", "p_mel", "logp_bcc", "logp_mel"]
    assert df["true"].tolist() == ["", "mel"] and df["predicted"].tolist() == ["mel", "bcc"]
    assert df["decision_rule"].tolist() == ["most-probable"] * 2 and df["most_probable"].tolist() == ["mel", "bcc"]
    np.testing.assert_array_equal(df[["logp_bcc", "logp_mel"]].to_numpy(), np.log(proba))
    assert df["image_id"].tolist() == list(data.image_ids[[1, 2]]) and df["split"].tolist() == ["test", "test"]


def test_predictions_name_the_rule_and_keep_the_log_probabilities_apart(tmp_path):
    """predicted follows the decision weights, most_probable the probabilities; logp_ columns written to the last
    bit (a p_ rounded to 1.0 keeps its logp_), read back exactly."""
    data = load_cache(feature_cache(tmp_path / "c.h5", counts={"bcc": 2, "mel": 2}, dim=4))
    split = np.array(["test"] * 4, dtype=object)
    logp = np.array([[-1e-20, -46.0517], [-0.2, -1.7], [-3e-30, -68.0], [-0.9, -0.52]])
    proba = np.exp(logp)  # rows 0 and 2: p_bcc is exactly 1.0, their logp_bcc are not
    write_predictions(tmp_path / "p.csv", data, split, proba, np.arange(4), data.class_names, (1.0, 5.0), logp,
                      "balanced")
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert df["predicted"].tolist() == ["bcc", "mel", "bcc", "mel"]  # p x (1, 5): row 1 flips to mel
    assert df["most_probable"].tolist() == ["bcc", "bcc", "bcc", "mel"]
    assert set(df["decision_rule"]) == {"balanced"}
    assert df["p_bcc"][0] == df["p_bcc"][2] == 1.0
    np.testing.assert_array_equal(df[["logp_bcc", "logp_mel"]].to_numpy(), logp)  # bit for bit
