"""Bad input is refused with an error that names the field and the fix."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_config, tiny_model
from tests.trainables.conftest import make_spec
from trainables.checks import DataError, TrainerConfigError, check_model_against_config
from trainables.config import ModelConfig
from trainables.trainer import train

CFG = ModelConfig(path="x")


@pytest.mark.parametrize("layer", [0, 1])
def test_layer_below_the_updated_range(layer):
    with pytest.raises(TrainerConfigError, match=rf"hparams.layer: {layer} with model.update.layers_below=2"):
        check_model_against_config(tiny_config("llama"), CFG, [layer])


def test_layer_out_of_range():
    with pytest.raises(TrainerConfigError, match=r"hparams.layer: 6 is out of range .*num_hidden_layers=6"):
        check_model_against_config(tiny_config("llama"), CFG, [2, 6])


def test_unknown_parameter_name_lists_what_is_there():
    cfg = ModelConfig(path="x", update={"param": "mlp.down.weight"})
    with pytest.raises(TrainerConfigError) as e:
        check_model_against_config(tiny_model("qwen2"), cfg, [5])  # layers 3..5: 3 fails first
    msg = str(e.value)
    assert msg.startswith("model.update.param: 'mlp.down.weight' is not a parameter of model.layers.3 "
                          "(Qwen2DecoderLayer); parameters there: ")
    assert "mlp.down_proj.weight" in msg


def test_meta_model_and_good_config_pass():
    with torch.device("meta"):
        meta = tiny_model("llama")
    check_model_against_config(meta, CFG, [2, 5])
    check_model_against_config(tiny_config("qwen2"), CFG, range(2, 6))


def test_trainer_refuses_bad_layer_and_bad_data(tiny_dirs, tmp_path):
    with pytest.raises(TrainerConfigError, match="hparams.layer"):
        train(make_spec(tiny_dirs, tmp_path / "a", hparams={"layer": 1}))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"data\.forget\.path: .*empty"):
        train(make_spec(tiny_dirs, tmp_path / "b", data={"forget": {"path": str(tmp_path / "empty.jsonl")}}))
    with pytest.raises(DataError, match=r"data\.retain\.field: .*no field 'content'"):
        train(make_spec(tiny_dirs, tmp_path / "c",
                        data={"retain": {"path": str(tiny_dirs["retain"]), "field": "content"}}))
