import json
import os
import re
import textwrap

import torch
from safetensors.torch import load_file, save_file

from modeling_bcqlm import BcQLMForConditionalGeneration

from .helpers import run_python
from .test_modeling import make_inputs, make_model


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder, inputs_file, out_file = sys.argv[1:4]
    try:
        import modeling_bcqlm
        raise SystemExit("modeling_bcqlm is importable")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    inputs = load_file(inputs_file)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "BcQLMForConditionalGeneration", type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits, "generated": model.generate(**inputs, max_new_tokens=5, do_sample=False)}, out_file)
    """
)


def test_round_trip_gives_identical_logits(tmp_path):
    model = make_model(std=0.2)
    inputs = make_inputs()
    model.save_pretrained(tmp_path)
    loaded = BcQLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    loaded_state = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    assert loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight


def test_saved_folder_is_remote_code_as_for_any_registered_class(tmp_path):
    make_model().save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_bcqlm.py", "modeling_bcqlm.py"} <= files
    assert not any(name.endswith((".bin", ".pth", ".pt")) for name in files)
    assert "__init__.py" not in files  # Hub code folders are flat
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    # The classes' registered Auto classes only; `save_hub_folder` adds `AutoModel` and the pipeline.
    assert auto_map == {
        "AutoConfig": "configuration_bcqlm.BcQLMConfig",
        "AutoModelForImageTextToText": "modeling_bcqlm.BcQLMForConditionalGeneration",
    }
    # Remote code may only import its siblings relatively.
    for name in ("configuration_bcqlm.py", "modeling_bcqlm.py"):
        assert not re.search(r"^\s*(from|import) modeling_bcqlm", (tmp_path / name).read_text(), re.MULTILINE)


def test_remote_code_loads_without_the_package(tmp_path):
    model = make_model(std=0.3)
    folder = tmp_path / "bcqlm"
    model.save_pretrained(folder)
    inputs = make_inputs()
    save_file(inputs, tmp_path / "inputs.safetensors")
    result = run_python(
        "-c", REMOTE_LOAD, folder, tmp_path / "inputs.safetensors", tmp_path / "out", cwd=tmp_path, without_package=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = load_file(tmp_path / "out")
    with torch.no_grad():
        expected = model(**inputs).logits
    expected_generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    # Another process may pick other CPU kernels (reduction order): equal to float rounding, not bit for bit.
    torch.testing.assert_close(outputs["logits"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(outputs["generated"], expected_generated)
