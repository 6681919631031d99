"""TensorBoard per trial: an HParams session (method x KDCI x K x seed and the searched keys),
no bookkeeping among the scalars, and no duplicated or backwards steps after a resume; each
continuation (from a checkpoint or from the start over an earlier attempt's logs) recorded once
and ``metrics.jsonl`` holding each round once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.search.cases import config_layer
from kdci_ray.train.run_reporter import RunReporter, is_scalar

BOOKKEEPING = {"round", "step", "finished", "stopped_nonfinite", "stopped_round"}


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def _hparams(events: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    """The HParams plugin's summaries by kind: experiment, session_start_info, session_end_info."""
    out = {}
    for tag, content in events.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        out[tag.removeprefix("_hparams_/")] = data
    return out


def _start_values(data: plugin_data_pb2.HParamsPluginData) -> dict:
    out = {}
    for name, value in data.session_start_info.hparams.items():
        out[name] = getattr(value, value.WhichOneof("kind"))
    return out


def _metrics(rnd: int, step: int, acc: float, last: bool) -> dict[str, float]:
    return {"eval/acc": acc, "eval/acc_kdci": acc + 0.01, "train/loss": 1.0 / rnd,
            "kdci/cached": 1.0, "eval/rare_class": 3.0, "round": rnd, "step": step,
            "lr": 0.1, "time/elapsed_s": float(rnd), "finished": float(last)}


def test_bookkeeping_is_no_scalar() -> None:
    for key in ("round", "step", "finished", "stopped_nonfinite", "stopped_kd_step",
                "eval/rare_class", "kdci/cached"):
        assert not is_scalar(key)
    for key in ("eval/acc", "eval/acc_kdci", "train/loss", "lr", "time/elapsed_s",
                "kdci/scale", "synth/loss"):
        assert is_scalar(key)


def test_resumed_reporter_hides_the_earlier_attempts_later_steps(tmp_path: Path) -> None:
    """Attempt 1 reports rounds 1-3 (checkpoint at round 2, step 4) and dies; attempt 2 resumes
    from that checkpoint and reports rounds 3-4: TensorBoard shows each step once, attempt 2's."""
    searched = {"cases.batch": {"name": "b32", "train.batch_size": 32, "pool.size": 128},
                "train.lr": 0.05, "kdci.enabled": True}  # a Tune point, its case expanded
    cfg = resolve({"method": "dafl", "kdci.k": 4, "seed": 3}, config_layer(searched))
    sent: list[dict] = []

    def send(metrics, checkpoint_dir):
        sent.append(metrics)

    first = RunReporter(cfg, tmp_path, 0, send, searched=searched)
    for rnd in (1, 2, 3):
        first(_metrics(rnd, 2 * rnd, 0.1 * rnd, False), 2 * rnd, None)
    first.close()  # (a failed attempt: no session end)
    second = RunReporter(cfg, tmp_path, 0, send, searched=searched,
                         resume={"round": 2, "step": 4})
    for rnd in (3, 4):
        second(_metrics(rnd, 2 * rnd, 0.5 + 0.1 * rnd, rnd == 4), 2 * rnd, None)
    second.close()

    events = _events(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert {"eval/acc", "eval/acc_kdci", "train/loss", "lr", "time/elapsed_s"} <= tags
    assert not tags & (BOOKKEEPING | {"kdci/cached", "eval/rare_class"})
    accs = events.Scalars("eval/acc")
    assert [e.step for e in accs] == [2, 4, 6, 8]
    assert [e.value for e in accs] == pytest.approx([0.1, 0.2, 0.8, 0.9])  # round 3: attempt 2
    # the Ray report gets every report; metrics.jsonl each round once, bookkeeping included
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in sent] == [1, 2, 3, 3, 4]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert records[2]["eval/acc"] == pytest.approx(0.8)  # round 3: attempt 2's
    assert records[-1]["finished"] == 1.0 and "step" in sent[-1]
    assert [(r["round"], r["step"]) for r in _records(tmp_path / "resumes.jsonl")] == [(2, 4)]

    hp = _hparams(events)
    assert set(hp) == {"experiment", "session_start_info", "session_end_info"}
    values = _start_values(hp["session_start_info"])
    assert values == {"method": "dafl", "kdci.enabled": True, "kdci.k": 4.0, "seed": 3.0,
                      "cases.batch": "b32", "train.lr": 0.05, "train.batch_size": 32.0,
                      "pool.size": 128.0}
    experiment = hp["experiment"].experiment
    assert {h.name for h in experiment.hparam_infos} == set(values)
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/acc", "eval/acc_kdci"]
    assert hp["session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_a_restart_from_the_start_over_earlier_logs_is_a_continuation(tmp_path: Path) -> None:
    """A driver stopped before Tune registered the trial's first checkpoint: the trial starts
    again with no checkpoint over attempt 1's logs. It is recorded as a continuation from round
    0, attempt 1's reports are dropped and TensorBoard shows each step once, attempt 2's."""
    cfg = resolve({"method": "dafl", "seed": 0})
    first = RunReporter(cfg, tmp_path, 0, lambda m, c: None)
    for rnd in (1, 2):
        first(_metrics(rnd, 2 * rnd, 0.1 * rnd, False), 2 * rnd, None)
    first.close()
    second = RunReporter(cfg, tmp_path, 0, lambda m, c: None)
    for rnd in (1, 2, 3):
        second(_metrics(rnd, 2 * rnd, 0.5 + 0.1 * rnd, rnd == 3), 2 * rnd, None)
    second.close()

    accs = _events(tmp_path).Scalars("eval/acc")
    assert [e.step for e in accs] == [2, 4, 6]
    assert [e.value for e in accs] == pytest.approx([0.6, 0.7, 0.8])
    records = _records(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    assert [r["eval/acc"] for r in records] == pytest.approx([0.6, 0.7, 0.8])
    assert [(r["round"], r["step"]) for r in _records(tmp_path / "resumes.jsonl")] == [(0, 0)]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_a_continuation_killed_before_its_event_file_is_not_counted(tmp_path: Path) -> None:
    """Continuations are recorded before the attempt's event file opens; a record whose event
    file never appeared (its attempt was killed in between) is dropped by the next one, so the
    records always count the attempts that ran. A torn last report line goes too."""
    cfg = resolve({"method": "dafl", "seed": 0})
    first = RunReporter(cfg, tmp_path, 0, lambda m, c: None)
    first(_metrics(1, 2, 0.1, False), 2, None)
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"eval/acc": 0.2, "rou')  # a report cut short
    with open(tmp_path / "resumes.jsonl", "a") as fh:  # an attempt killed before its events
        fh.write(json.dumps({"round": 1, "step": 2, "time": 0.0, "events": ".resume001"}) + "\n")
    second = RunReporter(cfg, tmp_path, 0, lambda m, c: None, resume={"round": 1, "step": 2})
    second(_metrics(2, 4, 0.3, True), 4, None)
    second.close()

    resumes = _records(tmp_path / "resumes.jsonl")
    assert [(r["round"], r["events"]) for r in resumes] == [(1, ".resume001")]
    assert len(list(tmp_path.glob("events.out.tfevents.*.resume001"))) == 1
    assert [r["round"] for r in _records(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [e.step for e in _events(tmp_path).Scalars("eval/acc")] == [2, 4]


def test_a_stopped_run_ends_its_session_as_failed_and_vanilla_has_no_kdci_metric(
        tmp_path: Path) -> None:
    cfg = resolve({"method": "dafl", "seed": 1})
    report = RunReporter(cfg, tmp_path, 0, lambda m, c: None)
    report({"eval/teacher_acc": 0.9, "round": 1, "step": 2, "lr": 0.1, "time/elapsed_s": 1.0,
            "finished": 0.0, "stopped_nonfinite": 1.0, "stopped_round": 1,
            "stopped_kd_step": 2, "stopped_loss": float("nan")}, 2, None)
    report.close()
    events = _events(tmp_path)
    assert set(events.Tags()["scalars"]) == {"eval/teacher_acc", "lr", "time/elapsed_s"}
    hp = _hparams(events)
    assert hp["session_end_info"].session_end_info.status == api_pb2.STATUS_FAILURE
    assert [m.name.tag for m in hp["experiment"].experiment.metric_infos] == ["eval/acc"]
    assert _start_values(hp["session_start_info"])["kdci.enabled"] is False


# A real trial restarted from its checkpoint (each step once, its HParams session): the fail-once
# test of tests/test_interrupt_resume.py, for both trainers.
