"""BYOL: unlabelled data, EMA target (buffers too), symmetric loss, weight-decay groups, tiny run, resume, NaN stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import save_file

from backend.config import from_dict, read_yaml, to_dict
from backend.data.schema import IMAGENET_MEAN, IMAGENET_STD
from backend.data.unlabelled import UnlabelledImageDataset, read_exclude_list, scan_image_dirs
from backend.errors import ConfigError, DataFormatError
from backend.files import safe_torch_load
from backend.training.byol import BYOLModule, build_backbone, ema_update
from backend.training.byol_config import ByolConfig
from backend.training.byol_run import pretrain
from backend.training.schedules import cosine_momentum
from tests.conftest import make_lesion_image, nan_loss_at_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """12 lesion PNGs spread over nested folders, a corrupt JPEG, a hidden file and a non-image."""
    root = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / ("a/b" if i % 3 == 0 else "a" if i % 3 == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_lesion_image(rng, 48)).save(folder / f"img_{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def tiny_cfg(dirs: list[Path], log_dir: Path, **sections) -> ByolConfig:
    data = {
        "data": {"dirs": [str(d) for d in dirs], "img_size": 32, "batch_size": 4, "num_workers": 0},
        "model": {"backbone": "dermaresnet_se_tiny", "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
        "optim": {"lr": 1e-3, "base_momentum": 0.9, "warmup_epochs": 0.5},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": "1", "log_every_n_steps": 1,
                    "checkpoint_every_n_steps": 2},
        "monitor": {"histogram_every_n_steps": 0},
        "log_dir": str(log_dir),
        "experiment_name": "tiny",
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return from_dict(ByolConfig, data)


def module_for(tmp_path: Path, **sections) -> BYOLModule:
    return BYOLModule(to_dict(tiny_cfg([tmp_path], tmp_path, **sections)))


# -- data ---------------------------------------------------------------------------------------


def test_scan_is_recursive_sorted_and_skips_hidden_and_non_images(image_dir):
    paths = scan_image_dirs([image_dir])
    assert len(paths) == 13 and paths == sorted(paths)  # 12 PNGs + the corrupt JPEG (found by name)
    assert {p.name for p in paths if p.parent.name == "b"} == {"img_00.png", "img_03.png", "img_06.png", "img_09.png"}
    assert not any(p.name.startswith(".") or p.suffix == ".txt" for p in paths)
    subset = scan_image_dirs([image_dir], max_images=5, seed=1)
    assert len(subset) == 5 and subset == sorted(subset) and set(subset) <= set(paths)
    assert subset == scan_image_dirs([image_dir], max_images=5, seed=1)  # seeded


def test_exclude_list_as_lines_or_csv(image_dir, tmp_path):
    lines = tmp_path / "exclude.txt"
    lines.write_text("img_00.png\nimg_01\n\n")
    table = tmp_path / "exclude.csv"
    table.write_text("image,split\nsub/img_02.jpg,val\n")
    assert read_exclude_list(lines) == {"img_00", "img_01"}
    assert read_exclude_list(table) == {"img_02"}
    kept = {p.stem for p in scan_image_dirs([image_dir], exclude=read_exclude_list(lines))}
    assert "img_00" not in kept and "img_01" not in kept and "img_02" in kept
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nimg_00\n")
    with pytest.raises(DataFormatError, match="'image' column"):
        read_exclude_list(bad)
    with pytest.raises(ConfigError, match="image folder not found"):
        scan_image_dirs([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="no images found"):
        scan_image_dirs([tmp_path])


def test_two_different_strong_asymmetric_views_and_bad_files_skipped(image_dir, tmp_path):
    cfg = tiny_cfg([image_dir], tmp_path)
    ds = UnlabelledImageDataset.from_config(cfg.data)
    by_name = {i: {type(t).__name__: t for t in tr.transforms} for i, tr in enumerate((ds.transform1, ds.transform2))}
    # BYOL's asymmetry: view 1 always blurred, never solarized; view 2 rarely blurred, sometimes solarized.
    assert by_name[0]["GaussianBlur"].p == 1.0 and by_name[0]["Solarize"].p == 0.0
    assert by_name[1]["GaussianBlur"].p == pytest.approx(0.1) and by_name[1]["Solarize"].p == pytest.approx(0.2)
    for view in by_name.values():  # strong, not the supervised pipeline
        assert view["ColorJitter"].p == pytest.approx(0.8) and "ToGray" in view
        assert view["RandomResizedCrop"].scale == (0.2, 1.0)
    assert ds.color_constancy_power == 6.0  # applied once per image, not by each view
    broken = next(i for i, p in enumerate(ds.paths) if p.endswith("broken.jpg"))
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken\.jpg"):
        item = ds[broken]
    assert item["index"].item() == (broken + 1) % len(ds)  # replaced by the next readable image
    assert item["view1"].shape == item["view2"].shape == (3, 32, 32)
    assert not torch.equal(item["view1"], item["view2"])


# -- the module ---------------------------------------------------------------------------------


def test_ema_update_moves_target_toward_online_by_the_momentum_buffers_included(tmp_path):
    module = module_for(tmp_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.online_backbone.parameters():
            p.add_(torch.randn_like(p))
        for buf in module.online_backbone.buffers():
            if buf.dtype.is_floating_point:
                buf.add_(torch.rand_like(buf) + 0.5)
            else:
                buf.fill_(7)
    online = {**dict(module.online_backbone.named_parameters()), **dict(module.online_backbone.named_buffers())}
    before = {k: v.detach().clone() for k, v in module.target_backbone.state_dict().items()}
    ema_update(module.online_backbone, module.target_backbone, 0.9)
    after = module.target_backbone.state_dict()
    assert any(k.endswith("running_mean") for k in after) and any(k.endswith("num_batches_tracked") for k in after)
    for key, value in after.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * online[key].detach(), msg=key)
            assert not torch.equal(value, before[key]), key
        else:
            assert int(value) == 7, key  # integer buffers are copied


def test_momentum_follows_a_cosine_from_base_to_one(tmp_path):
    module = module_for(tmp_path, optim={"base_momentum": 0.99})
    module._total_steps = 101
    assert module.update_target(0) == pytest.approx(0.99)
    assert module.update_target(50) == pytest.approx(0.995)
    snapshot = {k: v.clone() for k, v in module.target_projector.state_dict().items()}
    with torch.no_grad():
        for p in module.online_projector.parameters():
            p.add_(1.0)
    assert module.update_target(100) == pytest.approx(1.0)
    for key, value in module.target_projector.state_dict().items():  # momentum 1: the target stays
        assert torch.equal(value, snapshot[key]), key


def test_target_is_not_optimised_gets_no_grad_and_keeps_its_running_stats(tmp_path):
    module = module_for(tmp_path).train()
    target_params = [*module.target_backbone.parameters(), *module.target_projector.parameters()]
    group_ids = [id(p) for g in module.param_groups() for p in g["params"]]
    online_ids = {id(p) for m in module.online_modules().values() for p in m.parameters()}
    assert len(group_ids) == len(set(group_ids)) and set(group_ids) == online_ids
    assert not {id(p) for p in target_params} & set(group_ids)
    assert all(not p.requires_grad for p in target_params)
    target_stats = {k: v.clone() for k, v in module.target_backbone.state_dict().items() if "running" in k}
    online_stats = {k: v.clone() for k, v in module.online_backbone.state_dict().items() if "running" in k}
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    module.byol_loss(x1, x2)["loss"].backward()
    assert all(p.grad is None for p in target_params)
    assert all(p.grad is not None for p in module.predictor.parameters())
    state = module.target_backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in target_stats.items())  # EMA, not its own batches
    assert any(not torch.equal(module.online_backbone.state_dict()[k], v) for k, v in online_stats.items())


def test_loss_is_symmetric_in_the_two_views(tmp_path):
    module = module_for(tmp_path).train()
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32) * 2 + 1
    with torch.no_grad():
        a, b = module.byol_loss(x1, x2)["loss"], module.byol_loss(x2, x1)["loss"]
        _, p1 = module.online_predict(x1)
        one_way = module.criterion(p1, module.target_project(x2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, one_way)  # both directions count
    assert -1.0 <= float(a) <= 1.0


def test_weight_decay_groups_exempt_gem_p_norms_biases_and_tokens(tmp_path):
    module = module_for(tmp_path, optim={"weight_decay": 0.07})
    names = {id(p): n for n, p in module.named_parameters()}
    groups = {g["name"]: g for g in module.param_groups()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    exempt = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.07 and groups["no_decay"]["weight_decay"] == 0.0
    assert "online_backbone.pool.raw_p" in exempt  # GeM p
    assert "online_backbone.model.bn1.weight" in exempt and "online_backbone.model.bn1.bias" in exempt
    assert "online_projector.layers.3.bias" in exempt and "predictor.layers.1.weight" in exempt  # bias, BN
    assert "online_backbone.model.conv1.0.weight" in decayed and "predictor.layers.0.weight" in decayed
    assert all(module.get_parameter(n).ndim > 1 for n in decayed)
    vit = module_for(tmp_path, model={"backbone": "vit_tiny_patch16_224",
                                      "backbone_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}})
    vit_names = {id(p): n for n, p in vit.named_parameters()}
    vit_exempt = {vit_names[id(p)] for g in vit.param_groups() if g["weight_decay"] == 0 for p in g["params"]}
    assert {"online_backbone.model.pos_embed", "online_backbone.model.cls_token"} <= vit_exempt  # 3-D, still exempt


# -- runs ---------------------------------------------------------------------------------------


class LastCkptSpy(Callback):
    """Reads ckpts/last.ckpt's global_step after each batch and epoch (runs after the run's own callbacks)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int | None]] = []

    def _read(self, trainer) -> int | None:
        path = Path(trainer.default_root_dir) / "ckpts" / "last.ckpt"
        return safe_torch_load(path)["global_step"] if path.is_file() else None

    def on_train_batch_end(self, trainer, *args) -> None:
        self.seen.append(("batch", trainer.global_step, self._read(trainer)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append(("epoch", trainer.global_step, self._read(trainer)))


def test_tiny_run_saves_often_exports_and_resumes(image_dir, tmp_path):
    spy = LastCkptSpy()
    first = pretrain(tiny_cfg([image_dir], tmp_path), callbacks=[spy])
    run = tmp_path / "tiny" / "version_0"
    assert first.run_dir == run and first.global_step == 3 and not first.nonfinite_events
    # every 2 steps mid-epoch, and at the epoch end
    assert ("batch", 2, 2) in spy.seen and ("epoch", 3, 3) in spy.seen
    # The saved config is the resolved one: the backbone's input normalisation filled in (ImageNet's here).
    assert from_dict(ByolConfig, read_yaml(run / "config.yaml")) == tiny_cfg(
        [image_dir], tmp_path, data={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    assert len((run / "images.txt").read_text().split()) == 13
    assert first.export == run / "backbone.safetensors" and (run / "backbone.json").is_file()
    assert np.isfinite(first.metrics["train/loss"]) and list(run.glob("events.out.tfevents.*"))
    ckpt = safe_torch_load(first.last_ckpt)  # plain data only
    state = ckpt["state_dict"]
    online_mean = state["online_backbone.model.bn1.running_mean"]
    target_mean = state["target_backbone.model.bn1.running_mean"]
    assert float(target_mean.abs().sum()) > 0  # the target's BN statistics moved (EMA of the online ones)
    assert not torch.equal(target_mean, online_mean)
    assert not torch.equal(state["online_backbone.model.conv1.0.weight"], state["target_backbone.model.conv1.0.weight"])

    resumed = pretrain(tiny_cfg([image_dir], tmp_path, trainer={"max_epochs": 2}, resume=True))
    assert resumed.run_dir == run and resumed.global_step == 6
    assert (run / "metrics.part0.csv").is_file() and (run / "metrics.csv").is_file()  # earlier curves kept
    # The momentum logged after the resume is the schedule's at that step, not the schedule's start.
    logged = pd.read_csv(run / "metrics.csv").dropna(subset=["train/momentum"])
    first = logged.iloc[0]
    assert first["train/momentum"] == pytest.approx(cosine_momentum(int(first["step"]), 6, 0.9, 1.0), abs=1e-6)
    assert first["train/momentum"] > 0.9
    assert safe_torch_load(resumed.last_ckpt)["epoch"] == 1
    assert not (tmp_path / "tiny" / "version_1").exists()
    with pytest.raises(ConfigError, match="cannot resume version 4"):
        pretrain(tiny_cfg([image_dir], tmp_path, resume_version=4))
    with pytest.raises(ConfigError, match=r"other settings: model.proj_dim: run has 16, now 8"):
        pretrain(tiny_cfg([image_dir], tmp_path, resume_version=0, model={"proj_dim": 8}))


def test_resume_learns_from_the_runs_own_images_only(image_dir, tmp_path, caplog):
    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    held_out = tmp_path / "val_test.txt"
    held_out.write_text("img_00.png\nimg_01.png\nimg_02.png\n")
    cfg = tiny_cfg([folder], tmp_path, data={"exclude_list": str(held_out)})
    first = pretrain(cfg)
    listed = (first.run_dir / "images.txt").read_text()
    record = (first.run_dir / "config.yaml").read_bytes()
    assert len(listed.split()) == 10 and "img_00" not in listed
    # Resuming without the exclusion list would pretrain on the held-out images: refused, by name.
    with pytest.raises(ConfigError, match=r"data.exclude_list: run has '.*val_test.txt', now None"):
        pretrain(tiny_cfg([folder], tmp_path, trainer={"max_epochs": 2}, resume=True))
    # Images added to the folder since do not join a resumed run, and its record is not rewritten.
    Image.fromarray(make_lesion_image(np.random.default_rng(5), 48)).save(folder / "img_99.png")
    resumed = pretrain(tiny_cfg([folder], tmp_path, trainer={"max_epochs": 2}, resume=True,
                                data={"exclude_list": str(held_out)}))
    assert resumed.run_dir == first.run_dir and resumed.global_step == 2 * first.global_step
    assert (first.run_dir / "images.txt").read_text() == listed
    assert (first.run_dir / "config.yaml").read_bytes() == record
    # An exclusion list that names none of the images is said, not silently ignored.
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("FOO_1.jpg\n")
    with caplog.at_level("WARNING", logger="backend.data.unlabelled"):
        assert len(scan_image_dirs([folder], exclude=read_exclude_list(wrong))) == 14
    assert "names 1 images and none of them is under" in caplog.text


@pytest.mark.integration
def test_byol_from_the_tensorflow_mobilenet_uses_its_scale_and_reestimates_batchnorm(image_dir, tmp_path, caplog,
                                                                                      shared_weights):
    """A pretrained start is normalised as its weights expect ([-1, 1]) and its folded BatchNorm re-estimated."""
    model = {"backbone": "mobilenetv2_100", "backbone_kwargs": {"pad_type": "same"},
             "pretrained_path": str(shared_weights),
             "bn_reestimate_batches": 1}
    with caplog.at_level("INFO", logger="backend.training.byol_run"):
        result = pretrain(tiny_cfg([image_dir], tmp_path, model=model, trainer={"limit_train_batches": 1}))
    assert "re-estimated on 4 BYOL views" in caplog.text
    saved = read_yaml(result.run_dir / "config.yaml")["data"]
    assert saved["mean"] == [0.5, 0.5, 0.5] and saved["std"] == [0.5, 0.5, 0.5]
    meta = json.loads((result.run_dir / "backbone.json").read_text())
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    # Without a pretrained start nothing is re-estimated (random BatchNorm has nothing to keep).
    caplog.clear()
    with caplog.at_level("INFO", logger="backend.training.byol_run"):
        pretrain(tiny_cfg([image_dir], tmp_path / "scratch", model={"bn_reestimate_batches": 1},
                          trainer={"limit_train_batches": 1}))
    assert "re-estimated" not in caplog.text


def test_injected_nan_stops_the_run_with_a_dump(image_dir, tmp_path, monkeypatch):
    nan_loss_at_step(monkeypatch, BYOLModule, 1)
    result = pretrain(tiny_cfg([image_dir], tmp_path, trainer={"max_epochs": 3}, data={"batch_size": 3}))
    assert result.global_step == 2  # stopped in the step the NaN appeared, not after 3 epochs
    (event,) = result.nonfinite_events
    assert event["step"] == 1 and event["nonfinite_loss"] and event["action"] == "stop"
    assert any(name.startswith("online_backbone.") for name in event["nonfinite_grads"])
    dump = torch.load(event["dump"], weights_only=True)
    assert Path(event["dump"]).parent == result.run_dir / "dumps"
    assert dump["batch"]["view1"].shape == (3, 3, 32, 32)
    assert all(torch.isfinite(v).all() for v in dump["state_dict"].values() if v.is_floating_point())
    final = safe_torch_load(result.last_ckpt)["state_dict"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())  # the bad step was skipped


def test_resume_never_reads_the_start_weights_again_and_keeps_their_record(image_dir, tmp_path):
    start = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in build_backbone(tiny_cfg([image_dir], tmp_path).model, 32)
               .state_dict().items()}, str(start))
    first = pretrain(tiny_cfg([image_dir], tmp_path, model={"pretrained_path": str(start)}))
    start.unlink()  # the start file is gone: last.ckpt holds every weight
    resumed = pretrain(tiny_cfg([image_dir], tmp_path, model={"pretrained_path": str(start)},
                                trainer={"max_epochs": 2}, resume=True))
    assert resumed.run_dir == first.run_dir and resumed.global_step == 2 * first.global_step
    saved = safe_torch_load(resumed.last_ckpt)["hyper_parameters"]["config"]
    assert saved["model"]["pretrained_path"] == str(start)  # where the run started, still recorded
    assert json.loads((first.run_dir / "backbone.json").read_text())["config"]["model"]["pretrained_path"] == str(start)
