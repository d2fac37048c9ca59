"""dlib's face ResNet in the zoo: its file read whole without dlib, the descriptors dlib itself
computes on real aligned chips, the usual exports, and an ``epochs=0`` run that logs the
pretrained model with its evaluation, licence and lineage, registered and then started from
(``init=``), its registered pyfunc embedding a photo as dlib's own steps do. Skipped without
the faces extra; the ORL parts without ORL."""
from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from support.faces import ORL_FACES, paste_faces
from training.config import TrainConfig
from training.pipeline.run import train
from training.tracking.registration import register_best, runs_of_experiment
from zoo import names
from zoo.data.preprocessing import normalise, to_unit
from zoo.export import FORMATS, ParityThresholds, export_format, load_exported, measure_parity
from zoo.export.formats import eager_runner
from zoo.export.parity import reference_outputs
from zoo.faces import FaceStage
from zoo.faces.detect import face_chips
from zoo.models import create_model
from zoo.models.dlib_format import DlibFormatError, read_network
from zoo.models.dlib_resnet import (CHIP_SIZE, DLIB_MEAN_RGB, package_file, preprocessing,
                                    resolve_weights)
from zoo.models.pretrained import PretrainedError

dlib = pytest.importorskip("dlib", reason="dlib's own model needs the faces extra (dlib-bin)")
pytest.importorskip("face_recognition_models", reason="the faces extra ships dlib's model file")

PEOPLE = [f"s{i}" for i in range(3, 15)]


@pytest.fixture(scope="module")
def weights():
    return resolve_weights("true")


@pytest.fixture(scope="module")
def model(weights):
    return create_model("dlib_resnet", 0, 128, weights=weights, image_size=CHIP_SIZE).eval()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """150 px chips of real faces, aligned by the zoo's face stage (uint8 ``[N, 150, 150, 3]``)."""
    if not ORL_FACES.is_dir():
        pytest.skip(f"ORL faces not found at {ORL_FACES}")
    from PIL import Image

    stage = FaceStage(size=CHIP_SIZE)
    found = []
    for person in PEOPLE:
        for k in (1, 6):
            photo = Image.open(ORL_FACES / person / f"{k}.pgm").convert("RGB")
            faces = face_chips(photo, stage, max_faces=1)
            if faces:
                found.append(faces[0].chip)
    assert len(found) >= 20  # the HOG detector finds nearly every ORL face
    return np.stack(found)


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _dlib_steps(jpeg: bytes) -> np.ndarray:
    """face_recognition's steps on dlib: the largest face, its 5 landmarks, its 150 px chip,
    dlib's descriptor (normalised)."""
    from PIL import Image

    from zoo.faces.dlib_models import PREDICTOR_FILE, model_file

    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    box = max(dlib.get_frontal_face_detector()(rgb, 1), key=lambda r: r.area())
    shape = dlib.shape_predictor(str(model_file(PREDICTOR_FILE)))(rgb, box)
    chip = dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=0.25)
    descriptor = np.asarray(dlib.face_recognition_model_v1(str(package_file()))
                            .compute_face_descriptor(chip))
    return descriptor / np.linalg.norm(descriptor)


def _inputs(chips: np.ndarray) -> torch.Tensor:
    pre = preprocessing()
    return normalise(to_unit(chips.transpose(0, 3, 1, 2)), pre.mean, pre.std)


def test_the_file_is_read_whole_and_checked(weights, tmp_path: Path) -> None:
    network = read_network(package_file())  # every byte, or an error
    kinds = [layer.kind for layer in network.layers]
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("fc")) == (29, 29, 1)
    assert kinds.count("add_prev") == 14  # 14 residual blocks
    assert network.input["rows"] == network.input["columns"] == CHIP_SIZE
    assert np.allclose(network.input["mean_rgb"], DLIB_MEAN_RGB, atol=1e-3)
    assert network.loss["distance_threshold"] == pytest.approx(0.6)

    cut = tmp_path / "cut.dat"
    cut.write_bytes(package_file().read_bytes()[:-5000])
    with pytest.raises(DlibFormatError, match=r"cut\.dat: .* at byte \d+"):
        read_network(cut)
    with pytest.raises(PretrainedError, match="pretrained=.*shape_predictor_5"):
        resolve_weights(str(package_file().with_name("shape_predictor_5_face_landmarks.dat")))
    with pytest.raises(PretrainedError, match="channels=1"):
        resolve_weights("true", in_chans=1)
    assert "CC0" in weights.licence  # as the package's metadata states it
    assert weights.source.endswith("dlib_face_recognition_resnet_model_v1.dat")
    assert len(weights.report.matched) == 2 * 29 + 29 * 2 + 1


def test_descriptors_equal_dlibs_own(model, chips) -> None:
    """The same chips through dlib's compute_face_descriptor and through the zoo's network."""
    reference = dlib.face_recognition_model_v1(str(package_file()))
    theirs = np.array([np.array(d) for d in reference.compute_face_descriptor(list(chips))])
    with torch.no_grad():
        x = _inputs(chips)
        raw = model.neck(model.backbone(x)).numpy()
        embedding = model(x)["embedding"].numpy()
    assert np.abs(raw - theirs).max() < 1e-4
    unit = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert np.abs(embedding - unit).max() < 1e-4
    # and the descriptors tell people apart: each chip's nearest other chip is its person's
    similarity = embedding @ embedding.T
    np.fill_diagonal(similarity, -1)
    assert (similarity.max(1) > 0.85).mean() > 0.8


def test_every_format_answers_like_eager(weights, chips, tmp_path: Path) -> None:
    model = create_model("dlib_resnet", 4, 128, weights=weights, image_size=CHIP_SIZE).eval()
    x = _inputs(chips[:20])
    reference = reference_outputs(eager_runner(model), x, batch_size=8)
    for fmt in FORMATS:
        exported = export_format(fmt, model, x[:2], tmp_path)
        parity = measure_parity(fmt, load_exported(fmt, exported.path), x, reference,
                                batch_size=8)
        assert parity.failures(ParityThresholds()) == [], (fmt, parity)


def test_a_zero_epoch_run_logs_the_pretrained_model(tmp_path: Path, monkeypatch) -> None:
    """``epochs=0`` trains nothing and evaluates everything; the version carries the licence,
    a run started from it (``init=``) fine-tunes the same network, and so does the
    ``faces-pretrained`` preset."""
    if not ORL_FACES.is_dir():
        pytest.skip(f"ORL faces not found at {ORL_FACES}")
    folder = tmp_path / "people"
    for person in PEOPLE:  # 12 people, 6 of them never seen (open_set=0.5)
        (folder / person).mkdir(parents=True)
        for k in range(1, 11):
            (folder / person / f"{k}.pgm").symlink_to(ORL_FACES / person / f"{k}.pgm")
    monkeypatch.setenv("ZOO_FACE_CACHE", str(tmp_path / "chips"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    common = dict(data=str(folder), open_set=0.5, seed=0, faces="align", image_size=CHIP_SIZE,
                  channels=3, embedding_dim=128, checkpoint=False, experiment="dlib")
    try:
        zero = train(TrainConfig.of(model="dlib_resnet", pretrained="true", epochs=0, **common))
        run = mlflow.MlflowClient().get_run(zero.run_id)
        assert run.info.status == "FINISHED" and run.data.params["epochs"] == "0"
        assert zero.history.epochs == [] and zero.metrics["best_epoch"] == 0
        for key in ("test_accuracy", "test_map_at_r", "open_map_at_r", "open_precision_at_1",
                    "best_val_map_at_r"):
            assert key in zero.metrics
        assert zero.metrics["open_map_at_r"] > 0.9  # dlib's model on people it never saw
        assert zero.metrics["test_accuracy"] > 0.9  # class prototypes, not an untrained head
        assert "CC0" in run.data.tags[names.PRETRAINED_LICENCE_TAG]
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(zero.run_id,
                                                                           names.PLOTS_DIR)}
        assert f"{names.PLOTS_DIR}/embeddings.png" in artifacts

        registered = register_best(runs_of_experiment("dlib"), "open_map_at_r")
        version = mlflow.MlflowClient().get_model_version(registered.name,
                                                          registered.champion_version)
        assert "Weights licence: CC0" in version.description
        assert "CC0" in version.tags[names.PRETRAINED_LICENCE_TAG]
        # the registered model, served as MLflow's pyfunc, embeds a photo as face_recognition
        # would: its face found, aligned and described by dlib's own steps
        photo = _jpeg(paste_faces([ORL_FACES / "s13" / "2.pgm"], np.random.default_rng(3),
                                  size=(320, 240))[0])
        served = mlflow.pyfunc.load_model(f"models:/{registered.name}@champion").predict(
            pd.DataFrame({"image": [photo]}))
        assert np.abs(np.asarray(served["embedding"][0]) - _dlib_steps(photo)).max() < 1e-4

        tuned = train(TrainConfig.of(init=f"runs:/{zero.run_id}/model", epochs=1, lr=1e-3,
                                     **{k: v for k, v in common.items()
                                        if k not in ("image_size", "embedding_dim")}))
        tuned_run = mlflow.MlflowClient().get_run(tuned.run_id)
        assert tuned_run.data.params["model"] == "dlib_resnet"
        assert "CC0" in tuned_run.data.tags[names.PRETRAINED_LICENCE_TAG]
        assert tuned.metrics["open_map_at_r"] > 0.85

        preset = train(TrainConfig.of(preset="faces-pretrained", epochs=2, **{
            k: v for k, v in common.items() if k in ("data", "open_set", "seed", "checkpoint",
                                                     "experiment")}))
        preset_run = mlflow.MlflowClient().get_run(preset.run_id)
        assert (preset_run.data.params["model"], preset_run.data.params["loss"],
                preset_run.data.params["faces"]) == ("dlib_resnet", "triplet", "align")
        assert "CC0" in preset_run.data.tags[names.PRETRAINED_LICENCE_TAG]
        assert preset.metrics["open_map_at_r"] > 0.9
    finally:
        mlflow.set_tracking_uri(None)
