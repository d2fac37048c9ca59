"""The face stage on real faces: ORL crops pasted into larger frames are found, aligned the
same wherever they are, cached, counted, and recorded on the model that trains on them."""
from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from serving.errors import RequestError
from serving.inputs.faces import FaceRequest, read_faces_now
from serving.inputs.uploads import Upload
from serving.settings import ServeSettings
from support.faces import ORL_FACES, background, contains, paste_faces
from zoo.data import Preprocessing, load_data
from zoo.faces import FaceStage
from zoo.record import ModelRecord

pytest.importorskip("dlib", reason="the face stage needs the faces extra (dlib-bin)")
pytest.importorskip("face_recognition_models", reason="the faces extra's model files")

from zoo.faces.detect import align, face_chips, find_faces

STAGE = FaceStage(size=64)


@pytest.fixture(scope="module")
def crops() -> dict[str, list[Path]]:
    """Per person, ORL images in which the detector finds exactly one face on its own."""

    if not ORL_FACES.is_dir():
        pytest.skip(f"ORL faces not found at {ORL_FACES}")
    found: dict[str, list[Path]] = {}
    for person in sorted(p for p in ORL_FACES.iterdir() if p.is_dir())[2:14]:
        for file in sorted(person.glob("*.pgm"))[:4]:
            if len(find_faces(Image.open(file).convert("RGB"), STAGE)) == 1:
                found.setdefault(person.name, []).append(file)
    return {k: v for k, v in found.items() if len(v) >= 2}


def test_faces_pasted_into_frames_are_found_where_they_went(crops) -> None:
    rng = np.random.default_rng(0)
    people = list(crops)
    for n in (1, 2, 3, 3, 2):
        chosen = [crops[people[int(i)]][0] for i in rng.choice(len(people), n, replace=False)]
        frame, pasted = paste_faces(chosen, rng)
        faces = find_faces(frame, STAGE)
        assert len(faces) == n, (n, [f.box for f in faces], [p.place for p in pasted])
        for p in pasted:
            assert sum(contains(p.place, f.box) for f in faces) == 1, (p, faces)
        assert all(f.score is not None and len(f.landmarks) == 5 for f in faces)
        assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    assert find_faces(background(rng), STAGE) == []  # a photo without a face


def test_a_face_aligns_the_same_wherever_and_however_large_it_is(crops) -> None:
    """The chip of a face pasted anywhere, at any scale, into a photo (even a 12 MP one,
    which the detector sees downscaled) is the chip of the crop itself, give or take
    resampling; another person's chip is much further away."""
    rng = np.random.default_rng(1)
    people = list(crops)
    own = {p: align(np.asarray(Image.open(crops[p][0]).convert("RGB")),
                    find_faces(Image.open(crops[p][0]).convert("RGB"), STAGE)[0], STAGE).chip
           for p in people[:3]}
    frame, pasted = paste_faces([crops[p][0] for p in people[:3]], rng)
    big = frame.resize((4000, 3000), Image.Resampling.BICUBIC)
    for photo, factor in ((frame, 1), (big, 4000 / 640)):
        chips = face_chips(photo, STAGE)
        assert len(chips) == 3
        for p in pasted:
            chip = next(c for c in chips if contains(
                tuple(int(v * factor) for v in p.place), c.face.box))
            same = _inner_difference(chip.chip, own[p.person])
            others = min(_inner_difference(chip.chip, own[q]) for q in own if q != p.person)
            assert same < 12 and same < others / 2, (p.person, factor, same, others)


def _inner_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the chips' middle (eyes to mouth): the padding around the
    face shows each photo's own background."""
    n = a.shape[0]
    window = slice(n * 5 // 16, n * 11 // 16)
    return float(np.abs(a[window, window].astype(float) - b[window, window]).mean())


def _photo_folder(root: Path, crops: dict[str, list[Path]], rng: np.random.Generator) -> Path:
    """A folder per person of photos, one or two faces pasted in each (the person's own the
    larger), and one photo with no face."""
    people = list(crops)[:4]
    for k, person in enumerate(people):
        folder = root / person
        folder.mkdir(parents=True)
        for j, source in enumerate(crops[person][:2]):
            if j == 0:
                other = crops[people[(k + 1) % len(people)]][0]
                frame, _ = paste_faces([source, other], rng, scale=(1.6, 1.6))
                small = Image.open(other).convert("RGB").resize((64, 78))
                frame.paste(background(rng, (320, 480)), (320, 0))
                frame.paste(small, (330, 10))
            else:
                frame, _ = paste_faces([source], rng)
            frame.save(folder / f"{j}.jpg", quality=95)
    background(rng).save(root / people[0] / "none.png")
    return root


def test_a_folder_of_photos_is_aligned_cached_and_counted(crops, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_FACE_CACHE", str(tmp_path / "cache"))
    root = _photo_folder(tmp_path / "photos", crops, np.random.default_rng(2))
    data = load_data(str(root), image_size=64, channels=1, faces="align")
    report = data.face_report
    assert data.faces == FaceStage(size=64)
    none = f"{data.class_names[0]}/none.png"
    assert (report.found, report.missing, report.multiple) == (8, (none,), 4)
    assert report.cached == 0 and data.x.shape == (9, 1, 64, 64)
    again = load_data(str(root), image_size=64, channels=1, faces="align")
    assert again.face_report.cached == 9
    assert np.array_equal(again.x.raw(list(range(9))).numpy(), data.x.raw(list(range(9))).numpy())
    lazy = load_data(str(root), image_size=64, channels=1, faces="align", memory_budget=1)
    assert type(lazy.x).__name__ == "LazyImages"
    assert np.array_equal(lazy.x.raw(list(range(9))).numpy(), data.x.raw(list(range(9))).numpy())
    skipped = load_data(str(root), image_size=64, channels=1, faces="align", faces_missing="skip")
    assert len(skipped) == 8 and not any(p.endswith("none.png") for p in skipped.paths)
    with pytest.raises(ValueError, match=r"no face found in .*none.png \(faces_missing=fail"):
        load_data(str(root), image_size=64, channels=1, faces="align", faces_missing="fail")
    with pytest.raises(ValueError, match="faces=align finds faces in photos: give a folder"):
        load_data("digits", faces="align")


def test_a_run_on_photos_records_its_face_stage(crops, tmp_path, monkeypatch,
                                                tracking_uri) -> None:
    from training.config import TrainConfig
    from training.pipeline.run import train

    monkeypatch.setenv("ZOO_FACE_CACHE", str(tmp_path / "cache"))
    root = _photo_folder(tmp_path / "photos", crops, np.random.default_rng(3))
    result = train(TrainConfig.of(
        data=str(root), faces="align", image_size=32, channels=1, model="resnet18",
        loss="softmax", epochs=1, batch_size=4, val_fraction=0.0, test_fraction=0.5,
        monitor="none", plots=False, checkpoint=False))
    run = mlflow.get_run(result.run_id)
    assert {k: run.data.metrics[k] for k in ("faces_found", "faces_missing",
                                            "faces_multiple")} == {
        "faces_found": 8.0, "faces_missing": 1.0, "faces_multiple": 4.0}
    missing = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/faces/missing.txt")
    assert missing.strip().endswith("none.png")
    info = mlflow.models.get_model_info(result.model_uri)
    record = ModelRecord.from_dict(info.metadata["zoo"])
    assert record.faces == FaceStage(size=32) and record.pre.input_size == (1, 32, 32)
    assert run.data.params["faces"] == "align"


def _upload(image: Image.Image, fmt: str, **save: object) -> Upload:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return Upload(f"photo.{fmt.lower()}", buffer.getvalue())


def test_awkward_photos_are_handled_as_a_viewer_shows_them(crops) -> None:
    """EXIF-rotated, CMYK, greyscale, 16-bit, tiny, and faces cut by the border: the server's
    face reader finds what a person looking at the photo would (or says there is none)."""
    settings = ServeSettings()
    pre = Preprocessing(kind="image", input_size=(1, 64, 64), mean=[0.5], std=[0.25],
                        class_names=["a"])
    request = FaceRequest.of(settings)
    rng = np.random.default_rng(4)
    frame, pasted = paste_faces([crops[list(crops)[0]][0]], rng, size=(320, 240))

    def faces(upload: Upload) -> list:
        return read_faces_now([upload], pre, STAGE, request, settings).faces[0]

    upright = faces(_upload(frame, "PNG"))
    assert len(upright) == 1 and contains(pasted[0].place, upright[0].box)
    # stored sideways with an EXIF orientation tag (6: rotate 90° clockwise to view)
    sideways = frame.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = faces(_upload(sideways, "JPEG", exif=exif, quality=95))
    assert len(rotated) == 1 and contains(pasted[0].place, rotated[0].box)
    for variant in (frame.convert("CMYK"), frame.convert("L")):
        fmt = "JPEG" if variant.mode == "CMYK" else "PNG"
        (found,) = faces(_upload(variant, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
        assert contains(pasted[0].place, found.box)
    deep = Image.fromarray(np.asarray(frame.convert("L")).astype(np.uint16) * 257)  # 16-bit
    assert len(faces(_upload(deep, "PNG"))) == 1
    # half the face beyond the left border: whatever is found lies inside the photo
    cut = background(rng, (320, 240))
    cut.paste(Image.open(crops[list(crops)[1]][0]).convert("RGB").resize((138, 168)), (-40, 30))
    try:
        found = faces(_upload(cut, "PNG"))
    except RequestError as exc:  # or none is found: a 422, never a crash
        assert exc.status == 422
        found = []
    for face in found:
        assert 0 <= face.box[0] < face.box[2] <= 320 and 0 <= face.box[1] < face.box[3] <= 240
    with pytest.raises(RequestError, match=r"no face found in image 0 \('photo.png'\)") as err:
        faces(_upload(background(rng, (8, 8)), "PNG"))
    assert err.value.status == 422


def test_the_chip_maps_back_onto_the_photo(crops) -> None:
    """``chip_to_photo`` is the map the chip was sampled by: the photo read at each chip
    pixel's mapped place gives that chip pixel (what GradCAM's map is carried back by). At
    150 px the chip is sampled from the photo itself, not from a pyramid level."""
    from zoo.faces.detect import chip_to_photo

    rng = np.random.default_rng(6)
    frame, _ = paste_faces([crops[list(crops)[2]][0]], rng, size=(320, 240), scale=(1.7, 1.7))
    rgb = np.asarray(frame)
    stage = FaceStage(size=150)
    (face,) = find_faces(rgb, stage)
    chip = align(rgb, face, stage).chip.astype(float)
    grid = np.stack(np.meshgrid(np.arange(150.0), np.arange(150.0)), -1).reshape(-1, 2)
    mapped = np.hstack([grid, np.ones((len(grid), 1))]) @ chip_to_photo(face, stage).T
    x0, y0 = np.floor(mapped[:, 0]).astype(int), np.floor(mapped[:, 1]).astype(int)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < rgb.shape[1]) & (y0 + 1 < rgb.shape[0])
    fx, fy = (mapped[:, 0] - x0)[inside, None], (mapped[:, 1] - y0)[inside, None]
    x0, y0 = x0[inside], y0[inside]
    photo = rgb.astype(float)
    sampled = ((1 - fy) * ((1 - fx) * photo[y0, x0] + fx * photo[y0, x0 + 1])
               + fy * ((1 - fx) * photo[y0 + 1, x0] + fx * photo[y0 + 1, x0 + 1]))
    assert inside.mean() > 0.9
    assert np.abs(sampled - chip.reshape(-1, 3)[inside]).max() <= 1.0  # dlib truncates


def test_a_request_s_face_work_is_bounded_before_landmarks(crops, monkeypatch) -> None:
    """Issue 44's third finding: landmarks only for the faces kept (each photo's largest at
    least, ZOO_MAX_REQUEST_FACES over the request), and the detector's pixels over all photos
    refused from their headers (ZOO_MAX_DETECTOR_PIXELS) before any is decoded."""
    import zoo.faces.detect as detect

    pre = Preprocessing(kind="image", input_size=(1, 64, 64), mean=[0.5], std=[0.25],
                        class_names=["a"])
    rng = np.random.default_rng(5)
    people = [crops[p][0] for p in list(crops)[:4]]
    frame, _ = paste_faces(people, rng, size=(640, 480))
    photo = _upload(frame, "PNG")
    calls = []
    landmarks = detect._landmarks
    monkeypatch.setattr(detect, "_landmarks", lambda *a: calls.append(1) or landmarks(*a))
    settings = ServeSettings(max_request_faces=3)
    found = read_faces_now([photo, photo], pre, STAGE, FaceRequest.of(settings), settings)
    assert [len(f) for f in found.faces] == [3, 1]  # the second photo keeps its largest
    assert len(calls) == 4 and len(found.x) == 4
    one = read_faces_now([photo], pre, STAGE, FaceRequest.of(settings, max_faces=2), settings)
    assert len(one.faces[0]) == 2 and len(calls) == 6
    pixels = detect.detector_pixels(640, 480, STAGE)
    tight = ServeSettings(max_detector_pixels=2 * pixels - 1)
    with pytest.raises(RequestError, match="ZOO_MAX_DETECTOR_PIXELS") as refused:
        read_faces_now([photo, photo], pre, STAGE, FaceRequest.of(tight), tight)
    assert refused.value.status == 413 and len(calls) == 6
