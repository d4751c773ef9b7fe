from dataclasses import dataclass
from typing import Literal

import pytest

from dsrl_cli.config import build_config, cosmetic, hashed_config, parse_set_overrides
from dsrl_cli.errors import BadInput


@dataclass(frozen=True)
class Cfg:
    steps: int = 10
    lr: float = 1e-3
    kind: Literal["flow", "shortcut"] = "flow"
    name: str | None = None
    clip: float | None = 1.0
    use_na: bool = False
    device: str = cosmetic("auto")


def test_layers_precedence_and_coercion():
    cfg = build_config(Cfg, {"steps": 5, "lr": "0.1"}, {"steps": 7}, parse_set_overrides(["use-na=true", "lr=1e-4"]))
    assert cfg == Cfg(steps=7, lr=1e-4, use_na=True)


@pytest.mark.parametrize("raw", ["none", "None", "null"])
def test_optional_fields_take_none(raw):
    cfg = build_config(Cfg, parse_set_overrides([f"clip={raw}", f"name={raw}"]))
    assert cfg.clip is None and cfg.name is None


def test_section_in_yaml_layer():
    cfg = build_config(Cfg, {"pretrain": {"steps": 3}}, section="pretrain")
    assert cfg.steps == 3


@pytest.mark.parametrize(
    "layer",
    [{"steps": "ten"}, {"steps": 1.5}, {"kind": "diffusion"}, {"bogus": 1}, {"use_na": "maybe"}],
)
def test_bad_values_are_bad_input(layer):
    with pytest.raises(BadInput):
        build_config(Cfg, layer)


def test_cosmetic_fields_not_hashed():
    assert "device" not in hashed_config(Cfg())
    assert hashed_config(Cfg(device="cpu")) == hashed_config(Cfg(device="cuda"))


def test_set_parsing_errors():
    with pytest.raises(BadInput):
        parse_set_overrides(["novalue"])
