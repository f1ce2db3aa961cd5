"""Loading only blocks 0..k (load_blocks="auto"): same features as the full model, nothing deeper read, clear errors."""

from __future__ import annotations

import json

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file

from ditf_core import block_loading
from ditf_core.cli import main as cli_main
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae
from ditf_core import load_pipeline
from ditf_core.samples import sample_scene

SMALL = dict(resolution=64, ensemble=2, seed=3)


def write_folder(path, transformer, **save):
    transformer.save_pretrained(path / "transformer", **save)
    build_tiny_vae().save_pretrained(path / "vae")
    pipeline = "FluxPipeline" if type(transformer).__name__.startswith("Flux") else "StableDiffusion3Pipeline"
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "flux": write_folder(root / "flux", build_tiny_flux()),
        "sd35": write_folder(root / "sd35", build_tiny_sd3(sd35=True)),
        "flux-sharded": write_folder(root / "flux-sharded", build_tiny_flux(), max_shard_size="40KB"),
    }


@pytest.fixture
def opened(monkeypatch):
    """The tensors read, and the safetensors files they were read from, while a test runs (opening a file to read
    its header, as the checks before a load do for every file, reads no tensor)."""
    record = {"read_from": set(), "tensors": []}
    real = safetensors.safe_open

    class Spy:
        def __init__(self, path, *args, **kwargs):
            self.path = str(path)
            self.handle = real(path, *args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            record["tensors"].append(name)
            record["read_from"].add(self.path)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    return record


@pytest.mark.parametrize("model, layer", [("flux", 1), ("flux", 3), ("sd35", 2), ("flux-sharded", 4)])
def test_truncated_load_gives_the_full_models_features_for_every_layer_up_to_k(folders, model, layer):
    image = sample_scene(size=(80, 64))
    full = load_pipeline(folders[model], device="cpu")
    truncated = load_pipeline(folders[model], device="cpu", load_blocks="auto", layers=[layer])
    assert truncated.loaded_depth == layer + 1 < full.loaded_depth == full.depth == truncated.depth
    # the full model's identity: same fingerprint (so caches are shared), same defaults from the full depth
    assert truncated.describe() == full.describe() and truncated.defaults == full.defaults
    layers = range(layer + 1)
    expected, got = full.capture(image, layers=layers, **SMALL), truncated.capture(image, layers=layers, **SMALL)
    for k in layers:
        assert torch.equal(got.layers[k].hidden, expected.layers[k].hidden), k
        for part in ("shift", "scale", "gate"):
            assert torch.equal(getattr(got.layers[k].modulation, part), getattr(expected.layers[k].modulation, part))
    assert torch.equal(truncated.extract(image, layer=layer, **SMALL).features,
                       full.extract(image, layer=layer, **SMALL).features)


def test_a_layer_beyond_the_loaded_blocks_is_a_clear_error(folders):
    truncated = load_pipeline(folders["flux"], device="cpu", load_blocks="auto", layers=[2])
    with pytest.raises(ValueError, match=r"layer 4 is beyond the blocks loaded: this pipeline holds blocks 0..2 of 6.*"
                                         r"load_blocks='all' \(CLI: --load-blocks all\)"):
        truncated.extract(sample_scene(size=(64, 64)), layer=4, **SMALL)
    with pytest.raises(ValueError, match=r"layer 6 is out of range .* use 0..5"):  # the FULL model's range
        truncated.extract(sample_scene(size=(64, 64)), layer=6, **SMALL)


def test_nothing_is_read_for_a_layer_beyond_the_full_depth(folders, opened):
    with pytest.raises(ValueError, match=r"layer 9 is out of range for this Flux transformer: use 0..5"):
        load_pipeline(folders["flux"], device="cpu", load_blocks="auto", layers=[9])
    assert opened["tensors"] == []


def test_shards_and_tensors_of_deeper_blocks_are_never_read(folders, opened):
    folder = folders["flux-sharded"] / "transformer"
    weight_map = json.loads((folder / block_loading.WEIGHTS_INDEX).read_text())["weight_map"]
    load_pipeline(folders["flux-sharded"], device="cpu", load_blocks="auto", layers=[2])  # 2 double + 1 single
    deeper_blocks = tuple(f"single_transformer_blocks.{i}." for i in (1, 2, 3))
    deeper = [name for name in weight_map if name.startswith(deeper_blocks)]
    transformer_reads = [name for name in opened["tensors"] if name in weight_map]
    assert deeper and not set(deeper) & set(transformer_reads)
    assert sorted(transformer_reads) == sorted(set(weight_map) - set(deeper))  # each needed tensor, once
    only_deeper = {weight_map[n] for n in deeper} - {weight_map[n] for n in weight_map if n not in deeper}
    assert only_deeper and not any(path.endswith(tuple(only_deeper)) for path in opened["read_from"])


def test_single_file_in_the_diffusers_layout(tmp_path):
    transformer = build_tiny_flux()
    folder = write_folder(tmp_path / "flux", transformer)
    single = tmp_path / "flux.safetensors"
    save_file(transformer.state_dict(), str(single))
    options = dict(config=folder / "transformer", vae=folder / "vae", device="cpu")
    full = load_pipeline(single, **options)
    truncated = load_pipeline(single, load_blocks="auto", layers=[2], **options)
    image = sample_scene(size=(64, 64))
    assert truncated.loaded_depth == 3
    expected = full.extract(image, layer=2, **SMALL).features
    assert torch.equal(truncated.extract(image, layer=2, **SMALL).features, expected)


# --- the original (BFL / Stability) single-file layouts, converted by diffusers' converters ------------------------
def original_checkpoint(family: str, blocks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A random checkpoint with exactly the keys diffusers' converter reads from a real one of this depth.

    The converters hard-code Flux's width (3072) in one split, so real-width rows stand in for [rows, 1] tensors."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    class Recorder(dict):  # answers every key the converter asks for, and notes it
        def __init__(self, seed):
            super().__init__(dict.fromkeys(seed))
            self.asked = []

        def pop(self, key, *default):
            self.asked.append(key)
            return torch.zeros(21504, 1)

        def __getitem__(self, key):
            return torch.zeros(24, 1)

    if family == "flux":
        seed = [f"double_blocks.{i}.x" for i in range(blocks[0])] + [f"single_blocks.{i}.x" for i in range(blocks[1])]
        recorder, convert = Recorder([*seed, "guidance_in.x"]), convert_flux_transformer_checkpoint_to_diffusers
    else:
        seed = [f"joint_blocks.{i}.x" for i in range(blocks[0])] + ["joint_blocks.0.x_block.attn2.x", "x.ln_q"]
        recorder, convert = Recorder(seed), convert_sd3_transformer_checkpoint_to_diffusers
    convert(recorder)
    generator = torch.Generator().manual_seed(0)
    return {f"model.diffusion_model.{key}": torch.randn(21504 if ".linear1." in key else 24, 1, generator=generator)
            for key in recorder.asked}


@pytest.mark.parametrize("family, blocks, kept, read_too", [
    ("flux", (3, 4), (3, 2), ()),  # k in the single blocks: nothing extra
    ("flux", (3, 4), (2, 0), ("single_blocks.0.",)),  # k a double block: the converter needs one single block
    ("sd3", (5,), (3,), ("joint_blocks.3.",)),  # block k + 1, so that block k converts as a full joint block
])
def test_original_layout_subset_converts_like_the_whole_file(tmp_path, opened, family, blocks, kept, read_too):
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    path = tmp_path / f"{family}.safetensors"
    save_file(original_checkpoint(family, blocks), str(path))
    convert = {"flux": convert_flux_transformer_checkpoint_to_diffusers,
               "sd3": convert_sd3_transformer_checkpoint_to_diffusers}[family]
    whole = convert(load_file(str(path)))
    lists = dict(zip((name for name, _ in block_loading.BLOCK_LISTS[family]), kept))

    def needed(name: str) -> bool:
        head, _, rest = name.partition(".")
        return head not in lists or int(rest.split(".", 1)[0]) < lists[head]

    names = [name for name in whole if needed(name)]
    opened["tensors"].clear()
    got = block_loading.read_weights(path, names, family, kept)
    assert sorted(got) == sorted(names)
    assert all(torch.equal(got[name], whole[name]) for name in names)
    original = dict(zip(block_loading.ORIGINAL_LISTS[family], kept))
    deeper = []
    for name in (name.removeprefix("model.diffusion_model.") for name in opened["tensors"]):
        head, _, rest = name.partition(".")
        if head in original and int(rest.split(".", 1)[0]) >= original[head]:
            deeper.append(name)
    # nothing of a deeper block, except the converter's one extra block
    assert opened["tensors"] and all(name.startswith(read_too) for name in deeper) and bool(deeper) == bool(read_too)


# --- the command line: auto where early exit applies, everything for sweeps ----------------------------------------
class Loading(Exception):
    """Raised where the weights would be read: the command's checks passed, nothing else needs to run."""


@pytest.fixture
def asked(monkeypatch):
    """(load_blocks, layers) of every model load a command asks for; the load stops the command."""
    import ditf_core.pipeline as pipeline_module

    calls = []

    def stop(files, **options):
        calls.append((options["load_blocks"], options["layers"]))
        raise Loading

    monkeypatch.setattr(pipeline_module, "load_model", stop)
    return calls


def test_each_command_loads_blocks_to_the_deepest_layer_it_captures(folders, tmp_path, asked):
    from PIL import Image
    from test_eval import make_spair

    image, frames = tmp_path / "a.png", tmp_path / "frames"
    Image.new("RGB", (64, 48), (20, 90, 160)).save(image)
    frames.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 48), (40 * index, 90, 160)).save(frames / f"{index}.png")
    Image.new("L", (64, 48), 255).save(tmp_path / "mask.png")
    spair = make_spair(tmp_path / "spair")
    model = ["--model", str(folders["flux"]), "--resolution", "64"]
    default = 3  # the tiny Flux's default layer k (of its 6 blocks)
    commands = {
        ("extract", str(image), "--layer", "2"): ("auto", [2]),
        ("extract", str(image)): ("auto", [default]),
        ("extract", str(image), "--load-blocks", "all"): ("all", [default]),
        ("extract-dataset", str(tmp_path), "--layer", "1"): ("auto", [1]),
        ("eval", "spair", str(spair), "--layer", "3"): ("auto", [3]),
        ("inspect", str(image), "--no-sweep", "--layers", "1,3"): ("auto", [1, 3]),
        ("inspect", str(image), "--no-sweep"): ("auto", [default]),
        ("inspect", str(image)): ("all", None),  # the sweep runs every block
        ("demo",): ("all", None),  # the demo sweeps too: it has no --load-blocks
        ("propagate", str(frames), "--mask", str(tmp_path / "mask.png"), "--layer", "4"): ("auto", [4]),
    }
    for argv, expected in commands.items():
        with pytest.raises(Loading):
            cli_main([*argv, *model, "--out" if argv[0] != "eval" else "--cache", str(tmp_path / "out")])
        assert asked[-1] == expected, argv
    assert len(asked) == len(commands)


def test_without_layers_auto_loads_through_the_family_default(folders):
    default = load_pipeline(folders["flux"], device="cpu", load_blocks="auto")
    assert default.loaded_depth == default.defaults.layer + 1 < default.depth


def test_the_inspector_sweep_loads_every_block_and_the_banner_says_what_is_held(folders, tmp_path, capsys):
    argv = ["inspect", "--model", str(folders["flux"]), "--resolution", "64", "--ensemble", "1", "--out", str(tmp_path)]
    assert cli_main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sweep"]["layers"] == list(range(6))
    assert "6 blocks," in capsys.readouterr().out
    assert cli_main([*argv, "--no-sweep", "--layers", "1"]) == 0
    assert "6 blocks [blocks 0..1 loaded]" in capsys.readouterr().out
