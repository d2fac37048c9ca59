"""Real tables: text categories, missing values, Parquet, and the fitted encoding travelling
with the model to MLflow's pyfunc, ONNX Runtime and the HTTP server (BentoML's and
OpenAI's clients), which take the same raw rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from support.process import REPO, Server
from zoo import names
from zoo.data import LoadedData, Preprocessing, Table, load_data, preprocess_rows, split_data
from zoo.data.table_encoding import (MAX_CATEGORIES, Column, category_text, decode, encode,
                                     feature_names, fit_columns)
from zoo.models import create_model
from zoo.models.rebuild import rebuild

CITIES = ["Oslo", "Lima", "Pune", "Kyiv"]


def mixed_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Four classes told apart by a number (with gaps), a city (text), a size (text with
    gaps) and a numeric code that is really a category; plus a noise column."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 4
    age = rng.normal(30 + 6 * label, 2.0)
    age[rng.random(n) < 0.15] = np.nan
    city = np.array(CITIES)[(label + (rng.random(n) < 0.2)) % 4]
    size = pd.Series(np.array(["S", "M", "L"])[label % 3]).where(rng.random(n) > 0.1)
    return pd.DataFrame({"age": age, "city": city, "size": size, "code": (label * 7) % 5,
                         "noise": rng.normal(size=n), "label": [f"kind{v}" for v in label]})


# --------------------------------------------------------------------------- encoding
def test_columns_are_fitted_on_the_training_rows_only() -> None:
    train = pd.DataFrame({"x": [1.0, np.nan, 3.0, 5.0], "c": ["a", "b", None, "a"]})
    columns = fit_columns(train)
    assert columns == [Column("x", "numeric", 3.0, True), Column("c", "categorical",
                                                                  categories=("a", "b"))]
    # rows the training split never saw: a new category and a value far away
    rows = pd.DataFrame({"x": [np.nan, 100.0, 200.0], "c": ["zebra", "b", None]})
    x = encode(rows, columns)
    assert feature_names(columns) == ["x", "x:missing", "c=?", "c=a", "c=b"]
    np.testing.assert_array_equal(x, [[3.0, 1, 1, 0, 0],  # filled with the TRAIN median
                                      [100.0, 0, 0, 0, 1],
                                      [200.0, 0, 1, 0, 0]])  # unseen and missing: unknown
    assert fit_columns(pd.concat([train, rows]))[0].median != 3.0  # would leak if refitted
    back = decode(x, columns)
    assert back["x"].tolist()[1:] == [100.0, 200.0] and back["x"].isna().tolist()[0]
    assert back["c"].isna().tolist() == [True, False, True] and back["c"][1] == "b"


def test_category_text_is_the_same_however_it_arrives() -> None:
    assert {category_text(v) for v in (3, 3.0, "3", "03", "3.0", np.int64(3),
                                       np.float32(3))} == {"3"}
    assert {category_text(v) for v in (0.1, np.float32(0.1), "0.10")} == {"0.1"}
    assert [category_text(v) for v in (None, np.nan, "", " ", pd.NA)] == [None] * 5
    assert category_text(2.5) == "2.5" and category_text("Oslo") == "Oslo"
    assert category_text(True) == category_text(np.bool_(True)) == "True"
    # a float32 code column (Parquet) fits the categories a client sends
    codes = fit_columns(pd.DataFrame({"f": np.array([0.1, 0.3, 0.1], np.float32)}),
                        categorical=["f"])[0]
    assert codes.categories == ("0.1", "0.3")
    assert encode(pd.DataFrame({"f": [0.3, "0.1"]}), [codes]).argmax(1).tolist() == [2, 1]
    # a flag with gaps is a category: JSON true lands where the CSV's True did
    flags = fit_columns(pd.DataFrame({"b": [True, None, False]}, dtype=object))[0]
    assert flags.kind == "categorical" and flags.categories == ("False", "True")
    assert encode(pd.DataFrame({"b": [True, False, None]}), [flags]).argmax(1).tolist() == \
        [2, 1, 0]
    column = fit_columns(pd.DataFrame({"code": [1, 2, 3]}), categorical=["code"])[0]
    assert column.categories == ("1", "2", "3")
    served = encode(pd.DataFrame({"code": ["2", 2.0, 7]}), [column])
    assert served.argmax(1).tolist() == [2, 2, 0]


def test_bad_values_name_the_column_and_row() -> None:
    columns = fit_columns(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"column 'x' is numeric, but row 1 holds 'tall'"):
        encode(pd.DataFrame({"x": [1.0, "tall"], "c": ["a", "a"]}), columns)
    with pytest.raises(ValueError, match=r"column 'x' has an infinite value in row 0"):
        encode(pd.DataFrame({"x": [np.inf], "c": ["a"]}), columns)
    with pytest.raises(ValueError, match=r"column 'x' has no values in the training split"):
        fit_columns(pd.DataFrame({"x": [np.nan, np.nan]}))
    with pytest.raises(ValueError, match=r"column 'x' has an infinite value in row 0"):
        encode(pd.DataFrame({"x": [10**400], "c": ["a"]}, dtype=object), columns)
    # numbers as text and blanks are fine in served rows
    ok = encode(pd.DataFrame({"x": ["2.5", "", None], "c": ["a", "b", "a"]}), columns)
    assert ok[:, 0].tolist() == [2.5, 1.5, 1.5]


def test_hostile_rows_are_4xx() -> None:
    from serving.errors import RequestError
    from serving.inputs.rows import rows_to_array
    from serving.settings import ServeSettings

    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan], "c": ["a", "b", "a"], "label": [0, 1, 0]})
    pre = split_data(load_frame(frame), val_fraction=0, test_fraction=0).preprocessing
    settings = ServeSettings()
    assert rows_to_array([[True, None]], pre, settings).shape == (1, pre.num_features)
    for rows, message in (([[10**400, "a"]], "infinite"), ([[1.0]], "takes 2 columns"),
                          ([[[1.0], "a"]], "is numeric"), (["x"], "not a list"),
                          ([[1e300, "a"]], "too large for float32")):
        with pytest.raises(RequestError, match=message):
            rows_to_array(rows, pre, settings)
    # rows as records: by name, a key left out is missing, an unknown key is named
    by_name = rows_to_array([{"c": "b", "x": 2.0}, {"c": "a"}], pre, settings)
    assert np.array_equal(by_name, rows_to_array([[2.0, "b"], [None, "a"]], pre, settings))
    with pytest.raises(RequestError, match=r"row 1 has unknown column\(s\) 'y', 'z'; the "
                                           r"model's columns are: x, c"):
        rows_to_array([{"x": 1.0}, {"y": 1, "z": 2}], pre, settings)
    unnamed = Preprocessing("tabular", (2,), [0.0, 0.0], [1.0, 1.0], ["a", "b"], None)
    with pytest.raises(RequestError, match="features have no names"):
        rows_to_array([{"a": 1.0}], unnamed, settings)
    legacy = Preprocessing("tabular", (2,), [0.0, 0.0], [1.0, 1.0], ["a", "b"])
    with pytest.raises(RequestError, match="too large"):
        rows_to_array([[10**400, 1.0]], legacy, settings)


def load_frame(frame: pd.DataFrame) -> LoadedData:
    from zoo.data.tables import table_data

    return table_data(frame, "t.csv", "CSV", label_column="label", feature_columns=None,
                      categorical_columns=None)


def test_rare_categories_share_the_unknown_slot() -> None:
    values = [f"v{i:04d}" for i in range(MAX_CATEGORIES + 50)] + ["common"] * 5
    column = fit_columns(pd.DataFrame({"c": values}))[0]
    assert len(column.categories) == MAX_CATEGORIES and "common" in column.categories


def test_csv_and_parquet_load_the_same_mixed_table(tmp_path: Path) -> None:
    frame = mixed_table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    by_csv = load_data(str(tmp_path / "t.csv"), categorical_columns=["code"])
    by_parquet = load_data(str(tmp_path / "t.parquet"), categorical_columns=["code"])
    assert isinstance(by_csv.x, Table) and by_csv.x.shape == (240, 5)
    assert by_csv.feature_names == ["age", "city", "size", "code", "noise"]
    assert by_csv.class_names == ["kind0", "kind1", "kind2", "kind3"]
    a, b = split_data(by_csv, seed=3), split_data(by_parquet, seed=3)
    assert a.preprocessing == b.preprocessing and torch.equal(a.train.x, b.train.x)
    pre = a.preprocessing
    assert pre.feature_groups == [2, 5, 4, 5, 1]  # age+missing, 4 cities, 3 sizes, 4 codes
    assert pre.input_size == (17,) and pre.row_width == 5
    # one-hot slots and indicators are 0/1 as they are; numbers are standardised
    assert [c["kind"] for c in pre.columns] == ["numeric", "categorical", "categorical",
                                                "categorical", "numeric"]
    assert pre.mean[2:16] == [0.0] * 14 and pre.std[2:16] == [1.0] * 14
    assert abs(float(a.train.x[:, 0].mean())) < 1e-5
    # served rows of the same raw values are the training inputs, bit for bit
    for split in (a.train, a.test):
        assert torch.equal(preprocess_rows(frame.iloc[split.indices.numpy()], pre), split.x)
        as_lists = frame.drop(columns="label").iloc[split.indices.numpy()]
        lists = [[None if pd.isna(v) else v for v in row] for row in as_lists.values.tolist()]
        assert torch.equal(preprocess_rows(lists, pre), split.x)
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre
    with pytest.raises(ValueError, match=r"categorical column\(s\) \['nope'\]"):
        load_data(str(tmp_path / "t.csv"), categorical_columns=["nope"])
    with pytest.raises(ValueError, match="cannot read Parquet"):
        (tmp_path / "bad.parquet").write_text("not parquet")
        load_data(str(tmp_path / "bad.parquet"))


def test_ft_transformer_makes_one_token_per_column() -> None:
    """A one-hot block's token is a row of an embedding table; a numeric column's token
    adds its missing indicator; all-numeric rows tokenize as before (one per feature)."""
    torch.manual_seed(0)
    groups = [2, 4, 1]
    model = create_model("ft_transformer", 3, 8, num_features=7, feature_groups=groups)
    tokenizer = model.backbone.tokenizer
    x = torch.tensor([[0.5, 1.0, 0, 0, 1, 0, -2.0]])
    tokens = tokenizer(x)[0, 1:]
    w, b = tokenizer.weight, tokenizer.bias
    assert tokens.shape == (3, 64)
    torch.testing.assert_close(tokens[0], 0.5 * w[0] + 1.0 * w[1] + b[0])
    torch.testing.assert_close(tokens[1], w[2 + 2] + b[1])  # slot 2 of the block: a lookup
    torch.testing.assert_close(tokens[2], -2.0 * w[6] + b[2])
    plain = create_model("ft_transformer", 3, 8, num_features=3).backbone.tokenizer
    assert plain.bias.shape == (3, 64) and not plain.grouped
    # the recipe rebuilds the grouped architecture, and nothing but lists of ints passes
    assert model.record.build["kwargs"]["feature_groups"] == groups
    again = rebuild(model.record.build)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval()(x)["embedding"], model.eval()(x)["embedding"])
    with pytest.raises(ValueError, match="do not split 7 features"):
        create_model("ft_transformer", 3, 8, num_features=7, feature_groups=[2, 2])


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_mixed_table_trains_exports_and_serves_raw_rows(tracking_uri: str,
                                                         tmp_path: Path) -> None:
    import bentoml
    import openai

    path = tmp_path / "shop.csv"
    mixed_table(n=320).to_csv(path, index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "train",
         "--env-manager", "local", "--experiment-name", "zoo-shop",
         "-P", f"data={path}", "-P", "model=ft_transformer", "-P", "loss=arcface",
         "-P", "epochs=4", "-P", "embedding_dim=16", "-P", "categorical_columns=code",
         "-P", "plots=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    from training.pipeline.export import ExportConfig, export_model
    from training.tracking.registration import register_best, runs_of_experiment
    from zoo.export.onnx_format import read_metadata

    runs = runs_of_experiment("zoo-shop")
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["test_precision_at_1"] > 0.6  # four classes: chance is 0.25
    register_best(runs, "test_precision_at_1")
    uri = "models:/zoo-shop@champion"
    export_model(ExportConfig(model_uri=uri, formats="onnx", time_runtimes=False))
    version = mlflow.MlflowClient().get_model_version_by_alias("zoo-shop", "champion")
    onnx_path = mlflow.artifacts.download_artifacts(
        f"runs:/{version.run_id}/{names.EXPORT_DIR}/{names.ONNX_FILE}",
        dst_path=str(tmp_path / "ref"))
    pre = Preprocessing.from_dict(read_metadata(Path(onnx_path))["preprocessing"])
    assert pre.feature_groups == [2, 5, 4, 5, 1]

    # raw rows as a user has them: a missing age, a missing size, a city never seen
    rows = [[41.0, "Oslo", "M", 2, 0.3], [None, "Lima", None, 4, -1.0],
            [25.5, "Atlantis", "S", 0, 0.0], [33.0, "Pune", "L", "1", 1.5]]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    expected = session.run(["embedding"], {"input": preprocess_rows(rows, pre).numpy()})[0]
    assert np.abs(expected[2] - expected[0]).max() > 1e-3  # the rows differ to the model

    # MLflow's pyfunc takes the raw DataFrame (the logged signature: strings, nulls)
    pyfunc = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame(rows, columns=pre.feature_names)
    by_pyfunc = np.stack(pyfunc.predict(frame)["embedding"])
    assert np.abs(by_pyfunc - expected).max() <= 1e-5

    server_env = {"MLFLOW_TRACKING_URI": tracking_uri, "ZOO_MODEL_URI": uri,
                  "ZOO_CACHE_DIR": str(tmp_path / "cache"),
                  "ZOO_GALLERY_DIR": str(tmp_path / "gallery"), "ZOO_WORKERS": "1"}
    with Server("serving.service:ZooService", server_env) as server:
        with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
            embedded = np.asarray(client.embed(rows=rows)["embeddings"])
            # the same rows as records keyed by column: a value left out is missing
            records = [{k: v for k, v in zip(pre.feature_names, row) if v is not None}
                       for row in rows]
            by_record = np.asarray(client.embed(rows=records)["embeddings"])
            classes = client.classify(rows=records)["predictions"]
            unknown = client.request("POST", "/identify",
                                     json={"rows": [{**records[0], "colour": "red"}]})
            described = client.request("GET", "/model").json()
            short = client.request("POST", "/embed", json={"rows": [[1.0, "Oslo"]]})
            bad = client.request("POST", "/embed", json={"rows": [[1.0, "Oslo", "M", 2, "x"]]})
        answer = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused",
                               max_retries=0).embeddings.create(model="zoo-shop", input=rows)
        typed = _rows_typed_into_the_page(server.url, pre.feature_names, rows[1], tmp_path)
    assert np.abs(embedded - expected).max() <= 1e-5
    assert np.abs(by_record - expected).max() <= 1e-5 and len(classes) == len(rows)
    assert typed == classes[1][0]["label"]  # the page sent row 1, its gaps left empty
    assert unknown.status_code == 400 and "unknown column(s) 'colour'" in unknown.json()["error"]
    assert np.abs(np.asarray([d.embedding for d in answer.data]) - expected).max() <= 1e-5
    assert [c["name"] for c in described["columns"]] == pre.feature_names
    assert short.status_code == 400 and "takes 5 columns" in short.json()["error"]
    assert bad.status_code == 400 and "column 'noise' is numeric" in bad.json()["error"]


def _rows_typed_into_the_page(url: str, columns: list[str], row: list, folder: Path) -> str:
    """Type ``row`` into the page's table (an empty cell for a gap), send it, and read the
    class the page shows (support/browser.py: Debian's chromium)."""
    from playwright.sync_api import expect

    from support.browser import browser_page, screenshot

    with browser_page() as page:
        page.goto(f"{url}/ui/")
        expect(page.locator("#rows-table thead th")).to_have_text(columns)
        for name, value in zip(columns, row):
            if value is not None:
                page.fill(f"#rows-table input[data-column='{name}']", str(value))
        page.click("#send-rows")
        expect(page.locator("article.result")).to_have_count(1)
        expect(page.locator("article.result .identity")).to_contain_text("Identity")
        screenshot(page, "ui-rows.png", folder)
        return page.locator("article.result .class strong").inner_text()
