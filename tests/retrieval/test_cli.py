"""``python -m scripts.build_reference``: a library from a label file with a model bundle, rerun, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from backend.retrieval.library import ReferenceLibrary
from scripts.build_reference import main
from tests.conftest import REPO_ROOT


def test_build_from_csv_with_a_bundle_records_the_model(tiny_bundles, tmp_path, capsys):
    data = tiny_bundles.data_dir
    out = tmp_path / "refs" / "clinic_a"
    argv = ["--csv", str(data / "labels.csv"), "--img_dir", str(data / "images"), "--output", str(out),
            "--checkpoint", str(tiny_bundles.fusion), "--chunk_size", "16"]
    assert main(argv) == 0
    assert "48 cases (48 embedded now, 0 kept from before), 0 skipped" in capsys.readouterr().err
    card = json.loads((tiny_bundles.fusion / "model_card.json").read_text())
    manifest = json.loads((out / "library.json").read_text())
    assert manifest["model"]["name"] == card["name"] and manifest["model"]["version"] == card["version"]
    assert manifest["model"]["weights_sha256"] == card["weights_sha256"] and manifest["model"]["kind"] == "bundle"
    assert manifest["source"]["checkpoint"] == str(tiny_bundles.fusion.resolve())
    library = ReferenceLibrary.load(out)
    assert len(library) == 48 and manifest["model"]["feature_dim"] == library.feature_dim
    assert set(library.rows["diagnosis"]) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"}
    # Rerun: nothing to do. Another model: refused with the command that rebuilds it.
    assert main(argv) == 0
    assert "48 cases (0 embedded now, 48 kept from before)" in capsys.readouterr().err
    other = [*argv[:-4], "--checkpoint", str(tiny_bundles.image_only)]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--rebuild" in err and "python -m scripts.build_reference" in err
    assert main([*other, "--rebuild"]) == 0
    assert json.loads((out / "library.json").read_text())["model"]["name"] == "Tiny image-only"


def test_help_is_light_and_bad_input_exits_2(tmp_path, capsys):
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, scripts.build_reference as b; b.build_parser(); print('torch' in sys.modules)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "False"
    assert main(["--csv", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "lib")]) == 2
    assert "no such file" in capsys.readouterr().err
