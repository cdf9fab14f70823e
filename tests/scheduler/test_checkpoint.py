"""Model checkpoints: round trips, and every kind of bad checkpoint refused by name."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import random
import struct
from typing import Any

import pytest

from streamsched.scheduler.checkpoint import (
    MAGIC,
    CheckpointError,
    decode,
    decode_checkpoint,
    encode,
    newest_valid,
    read_header,
)
from streamsched.scheduler.drift import drifting
from streamsched.scheduler.forecasting import RunningMeanForecaster, RuntimeForecaster
from streamsched.scheduler.learned import RiverRuntimeForecaster
from streamsched.scheduler.model import TaskSpec
from streamsched.testing import task

CREATED = 1_700_000_000.0
PROBES = [
    (task("p1", "resnet", gpus=1, work=100.0), "gpu-v100"),
    (task("p2", "resnet", gpus=2, work=100.0), "gpu-p100"),
    (task("p3", "bert", gpus=1, work=1000.0), "gpu-k80"),
    (task("p4", "never-seen", gpus=1), "gpu-v100"),
]


def _stream(seed: int = 5, n: int = 300) -> list[tuple[TaskSpec, str, float]]:
    rng = random.Random(seed)
    rate = {"resnet": 0.5, "bert": 2.0, "gpt": 8.0}
    out = []
    for i in range(n):
        kind, hw = rng.choice(sorted(rate)), rng.choice(["gpu-v100", "gpu-p100"])
        work = rng.choice([100.0, 1000.0])
        seconds = rate[kind] * work * (3.0 if hw == "gpu-p100" else 1.0)
        out.append(
            (task(f"t{i}", kind, gpus=1, work=work), hw, seconds * math.exp(rng.gauss(0, 0.1)))
        )
    return out


def _fed(model: RuntimeForecaster) -> RuntimeForecaster:
    for spec, hw, seconds in _stream():
        model.learn(spec, hw, seconds)
    return model


def _forge(payload: bytes, **header: Any) -> bytes:
    """A checkpoint built by hand, valid unless ``header`` says otherwise."""
    fields: dict[str, Any] = {
        "format": "streamsched-model",
        "format_version": 1,
        "model_name": "running-mean",
        "model_version": "running-mean@0",
        "created_at_s": CREATED,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    fields.update(header)
    head = json.dumps(fields).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + payload


@pytest.mark.parametrize(
    "make",
    [RunningMeanForecaster, RiverRuntimeForecaster, lambda: drifting(RiverRuntimeForecaster())],
)
def test_round_trip_restores_identical_predictions(make: Any) -> None:
    model = _fed(make())
    raw = encode(model, created_at_s=CREATED)
    restored = decode(raw, expect_name=model.name, expect_type=type(model))
    assert type(restored) is type(model)
    assert restored.version == model.version
    for spec, hw in PROBES:
        assert restored.predict(spec, hw) == model.predict(spec, hw)
    # The restored model keeps learning exactly as the original does.
    for spec, hw, seconds in _stream(seed=6, n=50):
        model.learn(spec, hw, seconds)
        restored.learn(spec, hw, seconds)
    assert [restored.predict(s, h) for s, h in PROBES] == [model.predict(s, h) for s, h in PROBES]


def test_header_describes_the_checkpoint_without_unpickling() -> None:
    model = _fed(RunningMeanForecaster())
    raw = encode(model, created_at_s=CREATED)
    header = read_header(raw)
    assert (header.model_name, header.model_version) == ("running-mean", "running-mean@300")
    assert header.created_at_s == CREATED
    assert header.format == "streamsched-model"
    assert header.format_version == 1
    assert header.payload_sha256 == hashlib.sha256(raw[-header.payload_bytes :]).hexdigest()
    assert decode_checkpoint(raw).header == header


def _valid() -> bytes:
    return encode(_fed(RunningMeanForecaster()), created_at_s=CREATED)


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


CORRUPTIONS: list[tuple[str, Any, str]] = [
    ("bad magic", lambda raw: b"PK\x03\x04" + raw[4:], "bad magic"),
    ("empty", lambda raw: b"", "truncated: 0 bytes, inside the magic"),
    ("cut in magic", lambda raw: raw[:5], "truncated: 5 bytes, inside the magic"),
    ("cut in length", lambda raw: raw[: len(MAGIC) + 2], "inside the header length"),
    ("cut in header", lambda raw: raw[: len(MAGIC) + 4 + 10], "header needs"),
    ("cut in payload", lambda raw: raw[:-7], "truncated: payload has"),
    ("trailing bytes", lambda raw: raw + b"xx", "2 unexpected bytes after the payload"),
    ("bit flip", _flip_last_byte, "checksum mismatch"),
    ("huge header", lambda raw: MAGIC + struct.pack(">I", 2**31) + raw[14:], "claims"),
    ("header not json", lambda raw: MAGIC + struct.pack(">I", 3) + b"{{{", "not UTF-8 JSON"),
    ("header a list", lambda raw: MAGIC + struct.pack(">I", 2) + b"[]", "not a JSON object"),
]


@pytest.mark.parametrize(
    ("case", "corrupt", "message"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_checkpoint_is_refused_with_a_clear_message(
    case: str, corrupt: Any, message: str
) -> None:
    with pytest.raises(CheckpointError, match=message):
        decode(corrupt(_valid()))


def test_unsupported_format_version_is_named() -> None:
    payload = pickle.dumps(RunningMeanForecaster())
    with pytest.raises(CheckpointError, match="unsupported checkpoint format version 2"):
        decode(_forge(payload, format_version=2))
    with pytest.raises(CheckpointError, match="format is 'other'"):
        decode(_forge(payload, format="other"))
    with pytest.raises(CheckpointError, match="'created_at_s' is missing or wrong"):
        decode(_forge(payload, created_at_s="yesterday"))


def test_model_name_mismatch_is_named_before_unpickling() -> None:
    raw = encode(RunningMeanForecaster(), created_at_s=CREATED)
    with pytest.raises(CheckpointError, match=r"of model 'running-mean'.*expected 'river-linear'"):
        read_header(raw, expect_name="river-linear")
    with pytest.raises(CheckpointError, match="expected 'river-linear'"):
        decode(raw, expect_name="river-linear")


def test_unpickling_failure_is_reported_not_raised_raw() -> None:
    with pytest.raises(CheckpointError, match="does not unpickle: UnpicklingError"):
        decode(_forge(b"not a pickle at all"))
    # A pickle of a class that no longer exists (renamed module after an upgrade).
    missing = b"cno_such_mod\nCls\n(tR."  # GLOBAL no_such_mod.Cls, called with ()
    with pytest.raises(CheckpointError, match="does not unpickle: ModuleNotFoundError"):
        decode(_forge(missing))


def test_payload_disagreeing_with_header_or_expected_type_is_refused() -> None:
    river = pickle.dumps(RiverRuntimeForecaster())
    with pytest.raises(CheckpointError, match="payload's name is 'river-linear'"):
        decode(_forge(river, model_name="running-mean"))
    with pytest.raises(
        CheckpointError,
        match="payload is a RiverRuntimeForecaster, expected a RunningMeanForecaster",
    ):
        decode(_forge(river, model_name="river-linear"), expect_type=RunningMeanForecaster)


def test_encode_refuses_what_it_cannot_checkpoint() -> None:
    with pytest.raises(CheckpointError, match="needs string 'name' and 'version'"):
        encode(object(), created_at_s=CREATED)
    bad = drifting(RunningMeanForecaster(), key_of=lambda spec, hw: hw)
    with pytest.raises(CheckpointError, match="'running-mean\\+drift': it does not pickle"):
        encode(bad, created_at_s=CREATED)


def test_newest_valid_checkpoint_wins_and_bad_ones_are_reported() -> None:
    old = _fed(RunningMeanForecaster())
    newer = _fed(RunningMeanForecaster())
    newer.learn(task("x", "resnet", gpus=1, work=100.0), "gpu-v100", 10.0)
    records = [
        encode(old, created_at_s=100.0),
        encode(newer, created_at_s=200.0),
        _flip_last_byte(encode(newer, created_at_s=300.0)),  # newest, but corrupt
        encode(RiverRuntimeForecaster(), created_at_s=400.0),  # another model
        b"garbage",
        encode(old, created_at_s=150.0),
    ]
    found, skipped = newest_valid(records, expect_name="running-mean")
    assert found is not None
    assert found.header.created_at_s == 200.0
    assert found.model.version == newer.version
    assert [index for index, _ in skipped] == [2, 3, 4]
    assert "checksum mismatch" in str(skipped[0][1])
    assert "expected 'running-mean'" in str(skipped[1][1])
    assert "bad magic" in str(skipped[2][1])


def test_newest_valid_of_nothing_usable_is_none() -> None:
    found, skipped = newest_valid([b"", b"junk"], expect_name="running-mean")
    assert found is None
    assert [index for index, _ in skipped] == [0, 1]
