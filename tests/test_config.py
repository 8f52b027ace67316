import pytest

from pipelines.config import load_config
from pipelines.errors import UserError

from .conftest import ROOT


@pytest.mark.parametrize("name", ["tiny", "demo", "demo128", "adni256"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.data.resolution in (32, 64, 128, 256)


def test_overrides_flat_dotted_and_own_section():
    cfg = load_config(None, ["--resolution", "48", "--unet.learning_rate=2e-4",
                             "--max_train_steps", "7"], section="vae")
    assert cfg.data.resolution == 48
    assert cfg.unet.learning_rate == 2e-4
    assert cfg.vae.max_train_steps == 7 and cfg.unet.max_train_steps != 7
    assert load_config(None, ["--block_out_channels", "[32, 64]", "--attention_levels",
                              "[false, true]"], section="unet").unet.block_out_channels == [32, 64]


@pytest.mark.parametrize("overrides, message", [
    (["--no_such_key", "1"], "unknown option"),
    (["--vae.no_such_key", "1"], "unknown config key"),
    (["--bogus.lr", "1"], "unknown config section"),
    (["--resolution", "big"], "expects int"),
    (["--resolution"], "needs a value"),
])
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides, section="vae")


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("vae:\n  learning_rat: 0.1\n")
    with pytest.raises(UserError, match="learning_rat"):
        load_config(path)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
