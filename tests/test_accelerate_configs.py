"""The accelerate config files in examples/accelerate load, and their FSDP wrap policy names real modules."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
EXPECTED = {
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
}


def test_every_config_file_is_listed():
    assert sorted(path.name for path in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_as_accelerate_reads_it(name):
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert config.distributed_type == EXPECTED[name]
    assert config.mixed_precision == "bf16"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-6])


def test_fsdp_wraps_blocks_and_experts_that_exist(small_tokenizer):
    fsdp = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2
    wrapped = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
    model = OneRecForConditionalGeneration(OneRecConfig.from_tokenizer(small_tokenizer, preset="tiny"))
    module_classes = {type(module).__name__ for module in model.modules()}
    # accelerate raises on an unknown name only when the launch starts; a renamed class must fail here first
    assert set(wrapped) <= module_classes, set(wrapped) - module_classes
    # the blocks are the model's own no-split units
    assert set(model._no_split_modules) <= set(wrapped)
