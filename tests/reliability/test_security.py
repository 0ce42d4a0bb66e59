"""Security: malicious checkpoints are refused before they run, through every door; user-supplied
file names never escape a folder; the upload size cap holds with a clear message.

Every malicious file carries :class:`tests.reliability.fault_tools.Exploit`, whose unpickling
creates a marker file: a refused load must also leave no marker.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from backend.errors import CheckpointError
from backend.inference.predictor import Predictor
from backend.io.bundle import PENDING_CARD_FILE, load_bundle
from backend.io.names import safe_stem
from tests.conftest import download_file
from tests.reliability.fault_tools import (
    Exploit,
    lesion_png,
    tiny_dataset,
    train_argv,
    untrained_bundle,
    write_malicious_checkpoint,
)

HOSTILE_NAMES = [
    "../../etc/passwd.jpg", "/etc/cron.d/evil.png", "..\\..\\Windows\\evil.png", "nul\x00byte.png",
    "A" * 3000 + ".png", "é" * 300 + ".png", "invoice\u202egnp.exe.png", "..png", ".hidden.png", "con:\r\n.png",
    "日本語の写真.png",
]
#: Streamlit itself rejects a NUL byte in an uploaded file name before the app sees it.
APP_NAMES = [n for n in HOSTILE_NAMES if "\x00" not in n]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("security_data"))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """``(malicious .ckpt, marker path)``; the marker must never exist."""
    marker = tmp_path / "pwned"
    return write_malicious_checkpoint(tmp_path / "evil.ckpt", marker), marker


# -- malicious pickles ----------------------------------------------------------------------------


def test_predict_cli_refuses_malicious_checkpoint(evil, tmp_path, capsys):
    from scripts.predict import main as predict_main

    ckpt, marker = evil
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(lesion_png(1))
    assert predict_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "p.csv"),
                         "--checkpoint", str(ckpt)]) == 2
    assert "refused to load" in capsys.readouterr().err and not marker.exists()


def test_evaluate_and_export_clis_refuse_malicious_checkpoint(evil, dataset, tmp_path, capsys):
    from scripts.evaluate import main as evaluate_main
    from scripts.export import main as export_main

    ckpt, marker = evil
    assert evaluate_main(["--checkpoint", str(ckpt), "--csv", str(dataset), "--output_dir",
                          str(tmp_path / "eval")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert export_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "bundle")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "bundle" / "model_card.json").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_train_refuses_malicious_pretrain_ckpt(evil, dataset, tmp_path, capsys, suffix):
    from scripts.train import main as train_main

    ckpt, marker = evil
    start = ckpt.rename(ckpt.with_suffix(suffix))  # a pickle disguised as safetensors too
    argv = train_argv(dataset, tmp_path / "runs", epochs=1)
    assert train_main(["--pretrain_ckpt", str(start), *argv]) == 2
    err = capsys.readouterr().err
    assert start.name in err and ("refused to load" in err or "not a readable safetensors file" in err)
    assert not marker.exists()


def test_train_resume_refuses_a_malicious_last_ckpt(evil, dataset, tmp_path, capsys):
    """A ``last.ckpt`` swapped for a payload: ``--resume_version`` stops with a clear error, nothing runs."""
    from scripts.train import main as train_main

    ckpt, marker = evil
    last = tmp_path / "runs" / "cpu_tiny" / "version_0" / "ckpts" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copy(ckpt, last)
    assert train_main(train_argv(dataset, tmp_path / "runs", epochs=1, resume=True)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "last.ckpt: refused to load" in err
    assert not marker.exists()


def _swap_weights(bundle: Path, payload: bytes, fix_card: bool) -> None:
    (bundle / "model.safetensors").write_bytes(payload)
    if fix_card:
        card = json.loads((bundle / "model_card.json").read_text())
        card["weights_sha256"] = hashlib.sha256(payload).hexdigest()
        (bundle / "model_card.json").write_text(json.dumps(card))


@pytest.mark.parametrize("attack", ["weights", "weights_and_sha", "pending_card", "card"])
def test_bundle_with_a_malicious_file_swapped_in_is_refused(tmp_path, capsys, attack):
    """Weights swapped for a pickle (with or without a matching card or pending card), or the card itself."""
    from scripts.predict import main as predict_main

    bundle = untrained_bundle(tmp_path / "models")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model.w": Exploit(marker)})
    if attack == "weights":
        _swap_weights(bundle, payload, fix_card=False)
        match = "SHA-256"
    elif attack == "weights_and_sha":
        _swap_weights(bundle, payload, fix_card=True)
        match = "not a readable safetensors file"
    elif attack == "pending_card":  # the roll-forward path of an interrupted export must not open a door
        card = json.loads((bundle / "model_card.json").read_text())
        (bundle / PENDING_CARD_FILE).write_text(json.dumps({**card, "weights_sha256":
                                                            hashlib.sha256(payload).hexdigest()}))
        (bundle / "model.safetensors").write_bytes(payload)
        match = "not a readable safetensors file"
    else:
        (bundle / "model_card.json").write_bytes(payload)
        match = "not valid JSON"
    with pytest.raises(CheckpointError, match=match):
        load_bundle(bundle)
    with pytest.raises(CheckpointError, match=match):
        Predictor.from_checkpoint(bundle)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(lesion_png(2))
    assert predict_main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "p.csv"),
                         "--checkpoint", str(bundle)]) == 2
    assert "error:" in capsys.readouterr().err and not marker.exists()


def test_app_refuses_a_malicious_default_model(evil, monkeypatch):
    from tests.app.conftest import new_app

    ckpt, marker = evil
    monkeypatch.setenv("DERMALENS_MODELS_DIR", str(ckpt.parent))
    monkeypatch.setenv("DERMALENS_MODEL", str(ckpt))
    at = new_app().run()
    assert not at.exception
    assert "refused to load" in "\n".join(str(e.value) for e in at.error)
    assert not marker.exists()


# -- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_stem_never_yields_a_path(name, tmp_path):
    stem = safe_stem(name)
    assert stem and not stem.startswith((".", "-")) and len(stem.encode("utf-8")) <= 120
    assert not set(stem) & {"/", "\\", "\x00", "\r", "\n", ":", "\u202e"}
    target = tmp_path / f"{stem}_dermalens_report.png"
    target.write_bytes(b"x")  # a real file system accepts it, and it lands in the folder
    assert target.resolve().parent == tmp_path.resolve()


def test_app_download_names_of_hostile_uploads_are_plain_file_names(app_models, media):
    """Every report download name made from a hostile upload name is one safe file name; the CSV keeps the name."""
    import csv
    import io

    from tests.app.conftest import new_app, session_uploads, upload

    at = new_app().run()
    upload(at, *[(name, lesion_png(i), "image/png") for i, name in enumerate(APP_NAMES)])
    assert not at.exception
    uploads = list(session_uploads(at).values())
    assert sorted(u.name for u in uploads) == sorted(APP_NAMES)
    for item in uploads:
        at.button(key=f"select_{item.id}").click().run()
        assert not at.exception
        for key, ext in (("export_png", "png"), ("export_pdf", "pdf")):
            filename = download_file(at, media, key).filename
            assert filename == f"{safe_stem(item.name)}_dermalens_report.{ext}"
            assert "/" not in filename and "\\" not in filename and "\x00" not in filename
            assert not filename.startswith(".") and len(filename.encode("utf-8")) <= 255
    rows = list(csv.DictReader(io.StringIO(download_file(at, media, "export_csv").content.decode("utf-8-sig"))))
    assert sorted(r["image"] for r in rows) == sorted(APP_NAMES)


def test_predict_cam_files_of_path_like_names_stay_in_cam_dir(tmp_path):
    """CSV rows naming ``../`` and absolute paths: every Grad-CAM file lands directly in ``--cam_dir``."""
    from scripts.predict import main as predict_main

    bundle = untrained_bundle(tmp_path / "models")
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (tmp_path / "data" / "outside.png").write_bytes(lesion_png(3))
    (images / "inside.png").write_bytes(lesion_png(4))
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(lesion_png(5))
    csv_path = images / "cases.csv"
    csv_path.write_text(f"image\n../outside.png\ninside.png\n{absolute}\n")
    cams = tmp_path / "out" / "cams"
    assert predict_main(["--input", str(csv_path), "--output", str(tmp_path / "out" / "p.csv"),
                         "--checkpoint", str(bundle), "--cam_dir", str(cams)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_cam.png"))
    assert len(written) == 3 and all(p.parent == Path("out/cams") for p in written), written


def test_predict_cam_files_are_one_per_image_whatever_the_names(tmp_path):
    from scripts.predict import main as predict_main

    bundle = untrained_bundle(tmp_path / "models")
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["x.png", "x.jpg", "x y.png", "x_y.png", "L" * 247 + ".png"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(lesion_png(10 + i) if name.endswith(".png") else _jpeg(10 + i))
    cams = tmp_path / "cams"
    rc = predict_main(["--input", str(folder), "--output", str(tmp_path / "p.csv"), "--checkpoint", str(bundle),
                       "--cam_dir", str(cams)])
    assert rc == 0 and len(list(cams.iterdir())) == len(names)


def _jpeg(seed: int) -> bytes:
    from tests.app.conftest import image_bytes

    return image_bytes(seed, "JPEG", size=64)


# -- upload size cap ------------------------------------------------------------------------------


def test_upload_cap_is_exact_and_says_why(app_models):
    """A file of exactly the limit is analysed; one byte more is refused by name, with the limit."""
    from streamlit import config

    from tests.app.conftest import new_app, session_uploads, upload

    png = lesion_png(20)
    limit = 1024 * 1024
    at_limit = png + b"\0" * (limit - len(png))  # bytes after IEND: still a valid PNG
    old = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)
    try:
        at = new_app().run()
        assert at.get("file_uploader")[0].proto.max_upload_size_mb == 1  # the browser-side cap too
        upload(at, ("at_limit.png", at_limit, "image/png"), ("over.png", at_limit + b"\0", "image/png"))
    finally:
        config.set_option("server.maxUploadSize", old)
    assert not at.exception
    assert [e.value for e in at.main.error] == ["over.png: file is 1.0 MB, over the 1 MB limit"]
    uploads = list(session_uploads(at).values())
    assert [u.name for u in uploads] == ["at_limit.png"] and uploads[0].prediction is not None
