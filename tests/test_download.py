"""cxr_tf.download with the Kaggle client stubbed at the network boundary."""

import pytest

from cxr_tf import download as dl
from cxr_tf import synthetic

SECRET = "0123456789abcdef-secret"


class FakeApi:
    """Stands in for KaggleApi: 'downloads' by writing a synthetic archive, or fails."""

    def __init__(self, fail: str | None = None):
        self.calls, self.fail = [], fail

    def dataset_download_files(self, slug, path, unzip, quiet):
        self.calls.append(slug)
        if self.fail:
            raise Exception(self.fail)
        synthetic.write_pneumonia(path, num_images=40, image_size=32, seed=0)


def test_download_then_skip(tmp_path, capsys):
    api = FakeApi()
    path = dl.download("pneumonia", tmp_path / "raw", kaggle_input=tmp_path / "none", api=api)
    assert api.calls == ["paultimothymooney/chest-xray-pneumonia"]
    assert (path / "chest_xray" / "train").is_dir() and (path / dl.COMPLETE).is_file()
    again = FakeApi(fail="must not be called")
    assert (
        dl.download("pneumonia", tmp_path / "raw", kaggle_input=tmp_path / "none", api=again)
        == path
    )
    assert again.calls == [] and "Already downloaded" in capsys.readouterr().out


def test_attached_kaggle_dataset_is_used_in_place(tmp_path):
    kaggle_input = tmp_path / "kaggle" / "input"
    synthetic.write_pneumonia(kaggle_input / "chest-xray-pneumonia", num_images=40, image_size=32)
    api = FakeApi(fail="must not be called")
    path = dl.download("pneumonia", tmp_path / "raw", kaggle_input=kaggle_input, api=api)
    assert path == kaggle_input / "chest-xray-pneumonia" and api.calls == []
    assert not (tmp_path / "raw").exists()
    synthetic.write_nih14(kaggle_input / "data", num_images=20, image_size=32)
    assert dl.find_attached("nih14", kaggle_input) == kaggle_input / "data"


def test_missing_credentials_say_where_kaggle_json_goes(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    with pytest.raises(dl.DownloadError, match=r"kaggle.json in ~/.kaggle/"):
        dl.download("nih14", tmp_path / "raw", kaggle_input=tmp_path / "none")
    assert dl.main(["nih14", "--out", str(tmp_path / "raw")]) == 2
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert dl.has_credentials()


@pytest.mark.parametrize(
    "failure, message",
    [
        ("404 Client Error: Not Found", "Kaggle has no dataset"),
        ("HTTPSConnectionPool: Max retries exceeded (Name or service not known)", "No network?"),
        ("401 Unauthorized", "Kaggle refused the request"),
    ],
)
def test_failures_are_explained_and_never_show_the_key(
    tmp_path, monkeypatch, capsys, failure, message
):
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    with pytest.raises(dl.DownloadError, match=message) as err:
        dl.download(
            "pneumonia", tmp_path / "raw", kaggle_input=tmp_path / "none", api=FakeApi(fail=failure)
        )
    assert SECRET not in str(err.value) and SECRET not in capsys.readouterr().out
    assert not (tmp_path / "raw" / "pneumonia" / dl.COMPLETE).exists()


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match="'mimic' is not one of"):
        dl.download("mimic", tmp_path)
