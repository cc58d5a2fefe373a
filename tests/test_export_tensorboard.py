"""`rtgrid export --format tensorboard`: the event files, read back with TensorBoard's own reader
(EventAccumulator and the HParams plugin's protos), equal the database rows read by plain SQL; a
re-export replaces the runs instead of adding a second copy of every point. SQLite and PostgreSQL.

Skipped only when tensorboard is not installed outside CI (the `tensorboard` extra); in CI it must run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import error_line, run_cli
from db_fixtures import pg_required
from results_data import db_fingerprint, expected_label, raw_frame

EXPERIMENT = "smoke-mini"
EPOCH_METRICS_SQL = ("train_loss", "train_acc", "test_acc", "ood_acc", "er", "lr", "seconds", "robust_acc")


def _reader() -> Any:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        if pg_required() or os.environ.get("CI", "").lower() == "true":
            pytest.fail("tensorboard must be installed in CI (pip install 'rtgrid[tensorboard]')")
        pytest.skip("tensorboard is not installed (pip install 'rtgrid[tensorboard]')")
    return EventAccumulator


def _session_hparams(accumulator: Any) -> dict[str, Any]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    contents = accumulator.PluginTagToContent("hparams")
    starts = [plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in contents.values()]
    starts = [s for s in starts if s.hparams]
    assert len(starts) == 1, contents.keys()
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in starts[0].hparams.items()}


def _export(url: str, out: Path) -> None:
    result = run_cli("export", EXPERIMENT, "--format", "tensorboard", "-o", out, "--db", url)
    assert f"runs to {out}/{EXPERIMENT}" in result.stderr


def test_tensorboard_export_reads_back_as_the_rows(results_url: str, tmp_path: Path) -> None:
    EventAccumulator = _reader()
    before = db_fingerprint(results_url)
    out = tmp_path / "tb"
    _export(results_url, out)
    _export(results_url, out)  # again: the same runs, one copy of each point
    assert db_fingerprint(results_url) == before

    trials = raw_frame(results_url, "SELECT t.* FROM trials t JOIN experiment_trials et ON et.trial_id = t.id "
                                    f"JOIN experiments e ON e.id = et.experiment_id WHERE e.name = '{EXPERIMENT}'")
    epochs = raw_frame(results_url, "SELECT * FROM epoch_metrics")
    runs = {p.name: p for p in (out / EXPERIMENT).iterdir() if p.is_dir()}
    assert sorted(runs) == sorted(f"{t.id}-{t.spec_hash.strip()[:12]}" for t in trials.itertuples())
    points = 0
    for trial in trials.to_dict("records"):
        run = runs[f"{trial['id']}-{trial['spec_hash'].strip()[:12]}"]
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, run
        accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
        accumulator.Reload()
        rows = epochs[epochs["trial_id"] == trial["id"]].sort_values("epoch")
        tags = set(accumulator.Tags()["scalars"])
        for metric in EPOCH_METRICS_SQL:
            expected = [(int(e), float(v)) for e, v in zip(rows["epoch"], rows[metric], strict=True)
                        if v is not None and v == v]
            tag = f"epoch/{metric}"
            if not expected:
                assert tag not in tags
                continue
            got = [(s.step, s.value) for s in accumulator.Scalars(tag)]
            assert [step for step, _ in got] == [step for step, _ in expected], (run, tag)
            assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, expected, strict=True))
            points += len(got)
        if trial["test_acc"] is not None and trial["test_acc"] == trial["test_acc"]:
            final = accumulator.Scalars("final/test_acc")
            assert len(final) == 1 and final[0].value == pytest.approx(trial["test_acc"], rel=1e-6)
        hparams = _session_hparams(accumulator)
        for key in ("kind", "arch", "dataset", "method"):
            assert hparams[key] == trial[key]
        for key in ("seed", "epochs"):
            assert hparams[key] == float(trial[key])
        assert hparams["source_label"] == expected_label(trial["source"], results_url)
        assert ("ood" in hparams) == isinstance(trial["ood"], str)
    assert points == sum(int(epochs[m][epochs["trial_id"].isin(trials["id"])].notna().sum())
                         for m in EPOCH_METRICS_SQL)

    config = EventAccumulator(str(out / EXPERIMENT))
    config.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    experiment = [plugin_data_pb2.HParamsPluginData.FromString(c).experiment
                  for c in config.PluginTagToContent("hparams").values()]
    assert len(experiment) == 1
    assert {h.name for h in experiment[0].hparam_infos} >= {"kind", "arch", "source", "dataset", "seed"}
    assert "final/test_acc" in {m.name.tag for m in experiment[0].metric_infos}


def test_tensorboard_export_needs_a_directory(results_sqlite: str, tmp_path: Path) -> None:
    _reader()
    line = error_line(run_cli("export", EXPERIMENT, "--format", "tensorboard", "--db", results_sqlite, expect=2))
    assert "-o DIR" in line
    afile = tmp_path / "file"
    afile.write_text("x")
    line = error_line(run_cli("export", EXPERIMENT, "--format", "tensorboard", "-o", afile, "--db", results_sqlite,
                              expect=2))
    assert "not a directory" in line
