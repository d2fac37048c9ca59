"""The model record: one typed, versioned description of a trained model, read the same way
from every place it travels (module, checkpoint, MLmodel metadata, ONNX file, bundle)."""
from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from zoo.export.bundle import BundleInfo
from zoo.data import Preprocessing
from zoo.models import create_model
from zoo.models.rebuild import load_weights, save_weights
from zoo.faces import FaceStage
from zoo.record import PLAIN_FORMAT, RECORD_FORMAT, Lineage, ModelRecord

PRE = {"kind": "image", "input_size": [1, 8, 8], "mean": [0.5], "std": [0.25],
       "class_names": ["a", "b"]}
#: What a model logged before records existed carried as ``zoo_meta`` (format 0): no
#: ``format``, the backbone's facts and the pretrained source loose beside the rest, and
#: a preprocessing dict without the fields added since (interpolation, columns).
LEGACY = {"model": "resnet18", "embedding_dim": 16, "timm_name": "resnet18", "feature_dim": 512,
          "stage": None, "grid": 1, "parts": 1, "timm_options": {},
          "pretrained": {"source": "hf-hub:timm/resnet18.a1_in1k", "sha256": "ab" * 32},
          "build": {"name": "resnet18", "num_classes": 2, "embedding_dim": 16, "kwargs": {}},
          "preprocessing": PRE, "loss": "arcface", "dataset": "faces", "run_id": "r1",
          "open_class_names": ["c"], "recipe": {"model": "resnet18", "init": ""}}


def test_a_record_round_trips_and_is_versioned() -> None:
    record = ModelRecord(model="resnet18", embedding_dim=16,
                         preprocessing=Preprocessing.from_dict(PRE), loss="cosface",
                         lineage=Lineage(init="models:/zoo-x@champion"),
                         architecture={"timm_name": "resnet18", "stage": 3})
    data = record.to_dict()
    # without a face stage nothing needs format 2: a server of before it reads the record
    assert data["format"] == PLAIN_FORMAT == 1 and "faces" not in data
    assert json.loads(json.dumps(data)) == data  # JSON as it is
    again = ModelRecord.from_dict(data)
    assert again == record and again.class_names == ["a", "b"]
    assert again.preprocessing_digest() == record.preprocessing_digest()
    assert again.to_dict() == data
    with pytest.raises(ValueError, match="format 3 is newer than this model-zoo reads "
                                         r"\(2\): upgrade"):
        ModelRecord.from_dict({**data, "format": RECORD_FORMAT + 1})
    # a face model's record is format 2 and carries its stage
    faced = record.with_(faces=FaceStage(size=8))
    data = faced.to_dict()
    assert data["format"] == RECORD_FORMAT == 2
    assert data["faces"] == {"mode": "align", "size": 8, "padding": 0.25, "upsample": 1,
                             "max_side": 1024, "detector": "dlib_hog",
                             "landmarks": "dlib_5point"}
    assert ModelRecord.from_dict(data) == faced
    assert ModelRecord.from_dict({**data, "faces": None}).faces is None
    with pytest.raises(ValueError, match="unknown face stage mode 'warp'"):
        ModelRecord.from_dict({**data, "faces": {"mode": "warp", "size": 8}})
    with pytest.raises(ValueError, match="not a model-zoo model record"):
        ModelRecord.from_dict({"preprocessing": PRE})
    with pytest.raises(ValueError, match="records no preprocessing"):
        _ = ModelRecord(model="resnet18", embedding_dim=16).pre


def test_a_model_logged_before_records_is_read_and_keeps_its_gallery_digest() -> None:
    record = ModelRecord.from_dict(LEGACY)
    assert record.lineage == Lineage(pretrained="hf-hub:timm/resnet18.a1_in1k",
                                     pretrained_sha256="ab" * 32)
    assert record.architecture["feature_dim"] == 512 and record.build["name"] == "resnet18"
    assert (record.loss, record.dataset, record.open_class_names) == ("arcface", "faces", ("c",))
    assert record.pre.interpolation == "bilinear"  # a field added since: its default
    # a gallery enrolled under the old server keeps its owner: the digest is of the
    # preprocessing exactly as recorded, as the old server computed it
    old = hashlib.sha256(json.dumps(PRE, sort_keys=True, default=str).encode()).hexdigest()
    assert record.preprocessing_digest() == old
    assert ModelRecord.from_dict(record.to_dict()).preprocessing_digest() == old
    # the dict form keeps the keys an older server reads
    data = record.to_dict()
    assert data["preprocessing"] == PRE and data["recipe"] == LEGACY["recipe"]


def test_the_record_rides_on_the_module_and_its_rebuild(tmp_path) -> None:
    model = create_model("resnet18", 2, 16, in_chans=1, image_size=8).eval()
    assert model.record.build["name"] == "resnet18"
    assert model.record.architecture["timm_name"] == "resnet18"
    model.record = model.record.with_(preprocessing=Preprocessing.from_dict(PRE), loss="arcface")
    assert pickle.loads(pickle.dumps(model)).record == model.record
    save_weights(model, tmp_path)
    assert load_weights(tmp_path).record == model.record
    # a module pickled before records existed held a zoo_meta dict instead
    state = dict(model.__dict__)
    state.pop("record")
    state["zoo_meta"] = LEGACY
    old = type(model).__new__(type(model))
    old.__setstate__(state)
    assert old.record == ModelRecord.from_dict(LEGACY)
    with torch.no_grad():
        assert old(torch.zeros(1, 1, 8, 8))["embedding"].shape == (1, 16)


def test_a_bundle_manifest_holds_the_record_and_reads_older_ones() -> None:
    record = ModelRecord.from_dict(LEGACY)
    info = BundleInfo(uri="models:/zoo-faces@champion", name="zoo-faces", version="1",
                      alias="champion", run_id="r1", record=record)
    again = BundleInfo.from_json(info.to_json())
    assert again == info and again.record.preprocessing_digest() == record.preprocessing_digest()
    older = json.loads(info.to_json())
    older["meta"] = LEGACY  # a manifest cached before records existed
    del older["record"]
    assert BundleInfo.from_json(json.dumps(older)).record == record


def test_the_run_link_points_at_an_http_tracking_server_and_never_repeats_credentials() -> None:
    """``/model``'s ``run_url`` (the page's link to the run in the MLflow UI)."""
    info = BundleInfo(uri="models:/zoo-faces@champion", name="zoo-faces", version="1",
                      alias="champion", run_id="r1", record=ModelRecord.from_dict(LEGACY),
                      experiment_id="7")
    assert info.run_url("https://user:secret@mlflow.example.org:8443/base/") == \
        "https://mlflow.example.org:8443/base/#/experiments/7/runs/r1"
    assert info.run_url("http://[::1]:5000") == "http://[::1]:5000/#/experiments/7/runs/r1"
    for local in (None, "", "sqlite:///mlflow.db", "file:///tmp/mlruns", "databricks"):
        assert info.run_url(local) is None
    older = json.loads(info.to_json())
    del older["experiment_id"]  # a manifest written before the link existed
    assert BundleInfo.from_json(json.dumps(older)).run_url("http://localhost:5000") is None
