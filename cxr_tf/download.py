"""Getting the raw archives: the Kaggle API, or a dataset already attached to a Kaggle notebook.

    python -m cxr_tf.download {pneumonia,nih14} --out DIR

Inside a Kaggle notebook with the dataset attached, the files under `/kaggle/input/...` are used
in place (read-only; the converter never writes to its source) and nothing is downloaded.
Elsewhere the Kaggle API downloads and unzips into `DIR/<dataset>/`, with a progress bar, and
a second run skips a complete download. Credentials come from `~/.kaggle/kaggle.json` or the
KAGGLE_USERNAME / KAGGLE_KEY variables; they are never printed or written anywhere.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from cxr_tf.cli import add_verbose, fail, quiet_tensorflow

KAGGLE_INPUT = Path("/kaggle/input")
COMPLETE = ".download_complete"


@dataclass(frozen=True)
class Source:
    """A Kaggle dataset and the file or folder that proves a copy of it is there."""

    slug: str
    marker: str  # a name found inside the unzipped archive
    size: str


SOURCES = {
    "pneumonia": Source("paultimothymooney/chest-xray-pneumonia", "chest_xray", "1.2 GB"),
    "nih14": Source("nih-chest-xrays/data", "Data_Entry_2017.csv", "45 GB"),
}


class DownloadError(RuntimeError):
    """The download cannot go ahead; the message says what to do."""


def find_attached(dataset: str, kaggle_input: Path = KAGGLE_INPUT) -> Path | None:
    """The folder of an attached Kaggle dataset holding `dataset`'s marker, if any."""
    marker = SOURCES[dataset].marker
    if not kaggle_input.is_dir():
        return None
    for candidate in sorted(kaggle_input.rglob(marker)):
        if (
            "__MACOSX" not in candidate.parts
            and len(candidate.relative_to(kaggle_input).parts) <= 5
        ):
            return candidate.parent
    return None


def has_credentials(environ=os.environ, home: Path | None = None) -> bool:
    """Kaggle credentials are configured (file or environment), without reading the key."""
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(environ.get("KAGGLE_CONFIG_DIR") or (home or Path.home()) / ".kaggle")
    return (config_dir / "kaggle.json").is_file()


def _kaggle_api():
    """An authenticated KaggleApi (imported late: the package authenticates on import)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as err:
        raise DownloadError("the Kaggle client is missing: pip install kaggle") from err
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as err:
        raise DownloadError(_CREDENTIALS_HELP) from err
    return api


_CREDENTIALS_HELP = (
    "no Kaggle credentials. Create an API token on kaggle.com (Settings > API > Create New "
    "Token) and put the downloaded kaggle.json in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME "
    "and KAGGLE_KEY. In a Kaggle notebook, attach the dataset instead (Add Input > Datasets)."
)


def download(dataset: str, out, *, kaggle_input: Path = KAGGLE_INPUT, api=None) -> Path:
    """Return a folder holding the raw `dataset`: attached in place, already downloaded, or
    downloaded now into `out/<dataset>/`. `api` (a KaggleApi) is for tests."""
    if dataset not in SOURCES:
        raise ValueError(f"dataset {dataset!r} is not one of {sorted(SOURCES)}")
    source = SOURCES[dataset]
    attached = find_attached(dataset, kaggle_input)
    if attached is not None:
        print(f"Using the attached Kaggle dataset in place: {attached}")
        return attached
    target = Path(out).expanduser() / dataset
    if (target / COMPLETE).is_file():
        print(f"Already downloaded: {target}")
        return target
    if api is None:
        if not has_credentials():
            raise DownloadError(_CREDENTIALS_HELP)
        api = _kaggle_api()
    target.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {source.slug} ({source.size}) into {target} ...")
    try:
        api.dataset_download_files(source.slug, path=str(target), unzip=True, quiet=False)
    except Exception as err:
        text = str(err)
        if "404" in text or "Not Found" in text:
            raise DownloadError(
                f"Kaggle has no dataset {source.slug!r} (404). Check the name on kaggle.com, "
                "and accept the dataset's terms there if it asks."
            ) from err
        if "401" in text or "403" in text:
            raise DownloadError(
                f"Kaggle refused the request ({text[:80]}). {_CREDENTIALS_HELP}"
            ) from err
        raise DownloadError(
            f"the download of {source.slug} failed ({type(err).__name__}: {text[:200]}). No "
            "network? Download the archive by hand, unzip it, and give its folder to "
            "`python -m cxr_tf.convert --source`."
        ) from err
    if not any(target.rglob(source.marker)):
        raise DownloadError(f"downloaded {source.slug}, but found no {source.marker} in {target}")
    (target / COMPLETE).write_text(source.slug)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tf.download", description=__doc__.split("\n")[0]
    )
    p.add_argument("dataset", choices=sorted(SOURCES))
    p.add_argument("--out", default="raw", help="download folder (default: raw)")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        path = download(args.dataset, args.out)
    except (DownloadError, ValueError) as err:
        return fail(err)
    print(
        f"Raw {args.dataset} data: {path}\nNext: python -m cxr_tf.convert {args.dataset} "
        f"--source {path} --out tfrecords"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
