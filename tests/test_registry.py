"""The registry: the models file format and its errors, the write API, picking up changes, the
submit-time asset checks, and `diffserve models list|add|remove` (as a subprocess)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from diffserve.core.errors import InvalidInput, ModelNotFound
from diffserve.core.request import RequestDraft
from diffserve.engine.models.registry import ModelRegistry, ModelsFileError

FULL_FILE = {
    "models": {
        "rv51": {"kind": "hub", "location": "SG161222/Realistic_Vision_V5.1_noVAE", "revision": "main",
                 "limits": {"max_size": 768}},
        "xl": {"kind": "folder", "location": "/srv/models/xl", "family": "sdxl"},
        "ckpt": {"kind": "single_file", "location": "/srv/ckpt/model.safetensors", "config": "/srv/sd15-config"},
    },
    "loras": {
        "add-detail": {"kind": "file", "location": "/srv/loras/add_detail.safetensors", "family": "sd"},
        "hub-lora": {"kind": "hub", "location": "someone/lora", "weight_name": "lora.safetensors"},
    },
    "embeddings": {"easyneg": {"kind": "file", "location": "/srv/emb/easyneg.pt", "token": "easynegative"}},
    "vaes": {"ft-mse": {"kind": "hub", "location": "stabilityai/sd-vae-ft-mse", "family": "sd"}},
    "ip_adapters": {"ip-adapter_sd15": {"kind": "folder", "location": "/srv/IP-Adapter", "subfolder": "models",
                                        "weight_name": "ip-adapter_sd15.safetensors",
                                        "image_encoder": "models/image_encoder", "family": "sd"}},
}


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def draft(**over) -> RequestDraft:
    fields = dict(model_id="tiny-sd", prompt="p", init_image="http://example.com/a.png")
    fields.update(over)
    return RequestDraft(**fields)


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


def test_every_section_of_the_file_is_read_on_top_of_the_builtins(tmp_path):
    reg = ModelRegistry.load(write(tmp_path / "models.json", FULL_FILE), tmp_path / "models")
    assert reg.get("rv51").limits.max_size == 768 and reg.get("rv51").source().revision == "main"
    assert reg.get("xl").family == "sdxl" and reg.get("ckpt").config == "/srv/sd15-config"
    assert reg.get("tiny-sd").builtin == "tiny-sd"  # built-ins stay
    assert reg.asset("loras", "add-detail").family == "sd"
    assert reg.asset("embeddings", "easyneg").token == "easynegative"
    assert reg.asset("vaes", "ft-mse").kind == "hub"
    # the file's ip-adapter_sd15 replaces the built-in one; the other vendor ids stay built in
    assert reg.asset("ip_adapters", "ip-adapter_sd15").location == "/srv/IP-Adapter"
    assert [i for i, _ in reg.entries("ip_adapters")] == [
        "ip-adapter-plus-face_sd15", "ip-adapter-plus-face_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h",
        "ip-adapter_sd15", "ip-adapter_sdxl"]
    assert reg.asset("ip_adapters", "ip-adapter_sdxl").location == "h94/IP-Adapter"


def test_a_missing_file_means_builtins_only(tmp_path):
    reg = ModelRegistry.load(tmp_path / "nope.json", tmp_path / "models")
    assert "tiny-sd" in reg.ids() and reg.entries("loras") == []
    with pytest.raises(ModelNotFound):
        reg.get("rv51")


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ({"modles": {}}, "modles: Extra inputs are not permitted"),
    ({"loras": {"x": {"kind": "url", "location": "a"}}}, "loras.x.kind"),
    ({"loras": {"x": {"kind": "file"}}}, "loras.x.location: Field required"),
    ({"loras": {"x": {"kind": "file", "location": "/a", "family": "sd3"}}}, "loras.x.family: unknown family 'sd3'"),
    ({"vaes": {"v": {"kind": "folder", "location": "/a", "revision": "main"}}},
     "vaes.v: revision applies to hub sources only"),
    ({"vaes": {"v": {"kind": "hub", "location": "a/b", "config": "/c"}}}, "vaes.v: config applies to file sources"),
    ({"embeddings": {"e": {"kind": "file", "location": "/a", "token": "two words"}}}, "embeddings.e.token"),
    ({"ip_adapters": {"i": {"kind": "folder", "location": "/a", "weight_name": "w"}}},
     "ip_adapters.i.image_encoder: Field required"),
    ({"models": {"m": {"kind": "folder", "location": "/a", "config": "/c"}}},
     "models.m: config applies to single_file sources only"),
    ({"models": {"m": {"kind": "folder", "location": "/a", "limits": {"max_size": "big"}}}},
     "models.m.limits.max_size"),
    ({"loras": {"a,b": {"kind": "file", "location": "/a"}}}, "loras.'a,b': an id must not contain commas"),
])
def test_a_bad_file_is_refused_naming_the_entry(tmp_path, content, expected):
    path = write(tmp_path / "models.json", content)
    with pytest.raises(ModelsFileError) as err:
        ModelRegistry.load(path, tmp_path / "models")
    assert str(path) in str(err.value) and expected in str(err.value)


# --------------------------------------------------------------------------------------------
# The write API
# --------------------------------------------------------------------------------------------


def test_add_and_remove_persist_to_the_file(tmp_path):
    path = tmp_path / "data" / "models.json"
    reg = ModelRegistry.load(path, tmp_path / "models")
    reg.add_model("rv51", {"kind": "hub", "location": "SG161222/rv", "limits": {"max_size": 768}})
    reg.add_asset("loras", "detail", {"kind": "file", "location": "/srv/d.safetensors", "family": "sd"})
    reg.add_asset("vaes", "ft-mse", {"kind": "hub", "location": "stabilityai/sd-vae-ft-mse"})
    on_disk = json.loads(path.read_text())
    assert on_disk == {
        "models": {"rv51": {"kind": "hub", "location": "SG161222/rv", "limits": {"max_size": 768}}},
        "loras": {"detail": {"kind": "file", "location": "/srv/d.safetensors", "family": "sd"}},
        "vaes": {"ft-mse": {"kind": "hub", "location": "stabilityai/sd-vae-ft-mse"}},
    }
    assert ModelRegistry.load(path, tmp_path / "models").get("rv51").limits.max_size == 768

    assert reg.remove_model("rv51").location == "SG161222/rv"
    reg.remove_asset("loras", "detail")
    assert json.loads(path.read_text()) == {
        "vaes": {"ft-mse": {"kind": "hub", "location": "stabilityai/sd-vae-ft-mse"}}}
    with pytest.raises(ModelNotFound):
        reg.get("rv51")
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left behind


def test_write_api_errors_name_the_field(tmp_path):
    reg = ModelRegistry.load(tmp_path / "models.json", tmp_path / "models")
    reg.add_asset("loras", "detail", {"kind": "file", "location": "/srv/d.safetensors"})
    cases = [
        (lambda: reg.add_asset("loras", "detail", {"kind": "file", "location": "/x"}), "lora_model", "already exists"),
        (lambda: reg.add_model("tiny-sd", {"kind": "folder", "location": "/x"}), "model_id", "already exists"),
        (lambda: reg.add_model("a b", {"kind": "folder", "location": "/x"}), "model_id", "commas or spaces"),
        (lambda: reg.add_model("m", {"kind": "folder"}), "location", "location: Field required"),
        (lambda: reg.add_asset("vaes", "v", {"kind": "folder", "location": "/v", "family": "nope"}), "family",
         "unknown family"),
        (lambda: reg.remove_model("tiny-sd"), "model_id", "built in"),
        (lambda: reg.remove_model("never"), "model_id", "Model not found: never"),
        (lambda: reg.remove_asset("embeddings", "never"), "embeddings_model", "embedding not found: never"),
        (lambda: reg.remove_asset("ip_adapters", "ip-adapter_sdxl"), "ip_adapter_id", "built in"),
    ]
    for action, field, words in cases:
        with pytest.raises(InvalidInput) as err:
            action()
        assert err.value.field == field and words in err.value.message, err.value.message
    # replace=True overrides, also a built-in (which comes back when the override is removed)
    reg.add_asset("loras", "detail", {"kind": "file", "location": "/y"}, replace=True)
    reg.add_model("tiny-sd", {"kind": "folder", "location": "/elsewhere"}, replace=True)
    assert reg.asset("loras", "detail").location == "/y" and reg.get("tiny-sd").location == "/elsewhere"
    reg.remove_model("tiny-sd")
    assert reg.get("tiny-sd").builtin == "tiny-sd"


def test_another_registry_picks_up_changes_before_its_next_lookup(tmp_path, caplog):
    path = tmp_path / "models.json"
    api, worker = (ModelRegistry.load(path, tmp_path / "models") for _ in range(2))
    with pytest.raises(InvalidInput):
        worker.asset("loras", "detail")
    api.add_asset("loras", "detail", {"kind": "file", "location": "/srv/d.safetensors"})
    assert worker.asset("loras", "detail").location == "/srv/d.safetensors"
    api.remove_asset("loras", "detail")
    with pytest.raises(InvalidInput):
        worker.asset("loras", "detail")
    # a hand edit that breaks the file: the last good entries stay in use, the error is logged
    api.add_model("m", {"kind": "folder", "location": "/m"})
    assert worker.get("m").location == "/m"
    path.write_text('{"models": {"m": {"kind": "folder"}}, "extra": 1}')
    with caplog.at_level(logging.ERROR, logger="diffserve.engine.models.registry"):
        assert worker.get("m").location == "/m"
    assert "keeping the previous entries" in caplog.text and "models.m.location" in caplog.text
    # the write API refuses to build on a broken file rather than overwrite it
    with pytest.raises(ModelsFileError):
        api.add_model("n", {"kind": "folder", "location": "/n"})
    # reload() (the worker's control event) reads at once; fixed file -> new entries
    path.write_text('{"models": {"m": {"kind": "folder", "location": "/fixed"}}}')
    worker.reload()
    assert worker.get("m").location == "/fixed"


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "models.json"
    writers = [ModelRegistry.load(path, tmp_path / "models") for _ in range(3)]  # like 3 processes: own locks

    def add_many(reg: ModelRegistry, n: int) -> None:
        for i in range(15):
            reg.add_asset("loras", f"w{n}-{i}", {"kind": "file", "location": f"/l/{n}/{i}"})

    threads = [threading.Thread(target=add_many, args=(reg, n)) for n, reg in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads(path.read_text())["loras"]) == 45


# --------------------------------------------------------------------------------------------
# Submit-time checks
# --------------------------------------------------------------------------------------------


def test_requests_naming_unknown_or_unfit_assets_are_refused(tmp_path):
    reg = ModelRegistry.load(write(tmp_path / "models.json", FULL_FILE), tmp_path / "models")
    reg.check_request(draft(lora_models=["add-detail", "hub-lora"], embeddings_model="easyneg", vae="ft-mse",
                            ip_adapter_id="ip-adapter_sd15", ip_adapter_image="http://example.com/face.png"))
    cases = [
        (draft(lora_models=["add-detail", "nope"]), "lora_model", "lora_model: LoRA not found: nope"),
        (draft(lora_models=["add-detail", "add-detail"]), "lora_model", "more than once"),
        (draft(model_id="xl", lora_models=["add-detail"]), "lora_model",
         "add-detail is for sd models; xl is a model of the sdxl family"),
        (draft(embeddings_model="nope"), "embeddings_model", "embedding not found: nope"),
        (draft(vae="nope"), "vae", "VAE not found: nope"),
        (draft(model_id="xl", vae="ft-mse"), "vae", "is for sd models"),
        (draft(ip_adapter_id="ip-adapter_sd15"), "ip_adapter_image", "ip_adapter_image is required"),
        (draft(ip_adapter_id="ip-adapter_sdxl", ip_adapter_image="http://example.com/a.png"), "ip_adapter_id",
         "ip-adapter_sdxl is for sdxl models; tiny-sd is a model of the sd family"),
        (draft(model_id="nope"), "model_id", "Model not found: nope"),
    ]
    for bad, field, words in cases:
        with pytest.raises(InvalidInput) as err:
            reg.check_request(bad)
        assert err.value.field == field and words in err.value.message, err.value.message
    # an sdxl IP-Adapter is fine on an sdxl model (a LoRA without a declared family fits any model)
    reg.check_request(draft(model_id="xl", ip_adapter_id="ip-adapter_sdxl", ip_adapter_image="x",
                            lora_models=["hub-lora"]))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
    env.update({"DIFFSERVE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"})
    return subprocess.run([sys.executable, "-m", "diffserve.cli.main", "models", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_models_cli_add_list_remove(tmp_path):
    """The real command, as a subprocess."""
    data = tmp_path / "data"
    added = cli(data, "add", "rv51", "--hub", "SG161222/Realistic_Vision_V5.1_noVAE", "--revision", "main",
                "--family", "sd", "--limits", '{"max_steps": 40}', "--max-size", "768")
    assert added.returncode == 0, added.stderr
    assert json.loads((data / "models.json").read_text())["models"]["rv51"] == {
        "kind": "hub", "location": "SG161222/Realistic_Vision_V5.1_noVAE", "revision": "main", "family": "sd",
        "limits": {"max_steps": 40, "max_size": 768}}  # --family sd is kept though sd is the default (issue 29)

    listed = cli(data, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("rv51 ") and "SG161222/Realistic_Vision_V5.1_noVAE" in line and "[file]" in line
               for line in lines)
    assert any(line.startswith("tiny-sd ") and "[built-in]" in line for line in lines)
    assert any(line.startswith("ip-adapter_sdxl ") and "sdxl" in line for line in lines)

    again = cli(data, "add", "rv51", "--folder", str(tmp_path))
    assert again.returncode == 1 and "model_id: model rv51 already exists" in again.stderr
    removed = cli(data, "remove", "rv51")
    assert removed.returncode == 0, removed.stderr
    assert "models" not in json.loads((data / "models.json").read_text())


def test_models_cli_assets(tmp_path, monkeypatch, capsys):
    """Assets through the same command, run in-process (main() with argv) to keep the suite quick."""
    from diffserve.cli.main import main

    for name in [k for k in os.environ if k.startswith("DIFFSERVE_")]:
        monkeypatch.delenv(name)
    data = ["--data-dir", str(tmp_path / "data")]
    (tmp_path / "loras").mkdir()
    lora = tmp_path / "loras" / "detail.safetensors"
    monkeypatch.chdir(tmp_path)  # a relative path is stored absolute
    assert main(["models", "add", "detail", "--kind", "lora", "--file", "loras/detail.safetensors",
                 "--family", "sd", *data]) == 0
    assert main(["models", "add", "easyneg", "--kind", "embedding", "--file", "e.pt", "--token", "easynegative",
                 *data]) == 0
    assert main(["models", "add", "ip-adapter_sd15", "--kind", "ip-adapter", "--folder", "ip", "--subfolder",
                 "models", "--weight-name", "ip-adapter_sd15.safetensors", "--image-encoder", "models/image_encoder",
                 "--family", "sd", "--replace", *data]) == 0
    on_disk = json.loads((tmp_path / "data" / "models.json").read_text())
    assert on_disk["loras"]["detail"] == {"kind": "file", "location": str(lora), "family": "sd"}
    assert on_disk["embeddings"]["easyneg"]["token"] == "easynegative"
    assert on_disk["ip_adapters"]["ip-adapter_sd15"]["location"] == str(tmp_path / "ip")
    capsys.readouterr()

    assert main(["models", "list", "--kind", "embedding", *data]) == 0
    assert "token=easynegative" in capsys.readouterr().out
    assert main(["models", "add", "v", "--kind", "vae", "--hub", "a/b", "--family", "sd9", *data]) == 1
    assert "unknown family 'sd9'" in capsys.readouterr().err
    assert main(["models", "add", "v", "--kind", "vae", "--hub", "a/b", "--max-size", "5", *data]) == 2
    assert "limits apply to models only" in capsys.readouterr().err
    assert main(["models", "add", "m", "--folder", "x", "--limits", "{oops", *data]) == 2
    assert "--limits is not valid JSON" in capsys.readouterr().err
    assert main(["models", "remove", "detail", "--kind", "lora", *data]) == 0
    assert main(["models", "remove", "detail", "--kind", "lora", *data]) == 1
    assert "LoRA not found: detail" in capsys.readouterr().err
    assert main(["models", "remove", "ip-adapter_sd15", "--kind", "ip-adapter", *data]) == 0
    assert main(["models", "remove", "ip-adapter_sd15", "--kind", "ip-adapter", *data]) == 1
    assert "is built in" in capsys.readouterr().err
