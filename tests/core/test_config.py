
import pytest

from mhtag.core.config import TrainConfig, list_presets, load_config, parse_overrides, saved_config
from mhtag.core.errors import MhtagError


def test_defaults_then_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 3\nimage_size: [160, 120]\nlr: 1\n")
    cfg = load_config(preset, {"epochs": 5})
    assert cfg.epochs == 5 and cfg.image_size == [160, 120] and cfg.lr == 1.0
    assert cfg.batch_size == TrainConfig().batch_size


def test_unknown_key_is_refused_with_the_valid_keys(tmp_path):
    with pytest.raises(MhtagError, match="unknown config key 'epoch'.*epochs"):
        load_config(overrides={"epoch": 3})


def test_exponent_floats_are_read_although_yaml_1_1_leaves_them_strings(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-4\n")
    assert load_config(preset, parse_overrides(["probe_lr=3e-3"])).lr == 1e-4
    assert load_config(overrides=parse_overrides(["probe_lr=3e-3"])).probe_lr == 3e-3


@pytest.mark.parametrize("key,value", [("epochs", "three"), ("epochs", 2.5), ("multilabel", "tags"),
                                       ("mode", "train"), ("aug_forbid", {"colour": ["blur"]}), ("lr", "fast"),
                                       ("keep", "probe"), ("patience", 0), ("pos_weights", "log"),
                                       ("distill", 1.5), ("distill", -0.1), ("teacher", 3)])
def test_wrong_types_and_values_are_refused(key, value):
    with pytest.raises(MhtagError):
        load_config(overrides={key: value})


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["epochs=3", "multilabel=[a, b]", "checkpoint="]) == {
        "epochs": 3, "multilabel": ["a", "b"], "checkpoint": None}
    with pytest.raises(MhtagError, match="key=value"):
        parse_overrides(["epochs"])


def test_auto_mode_picks_finetune_only_on_gpu():
    cfg = TrainConfig()
    assert cfg.resolved_mode(cuda=False) == "probe" and cfg.resolved_mode(cuda=True) == "finetune"


def test_single_label_and_tag_group_weighting_are_separate_settings():
    cfg = TrainConfig()
    assert (cfg.class_weights, cfg.pos_weights) == ("none", "sqrt")  # what fashion12k and pokemon measured
    with pytest.raises(MhtagError, match="pos_weights must be none, sqrt, inverse, not 'log'"):
        load_config(overrides={"pos_weights": "log"})


def test_a_run_saved_before_pos_weights_existed_resumes_with_the_tag_weighting_it_trained_with():
    old = {k: v for k, v in TrainConfig(class_weights="none").to_dict().items() if k != "pos_weights"}
    assert saved_config(old).pos_weights == "none"  # not today's default, sqrt
    assert saved_config(TrainConfig(class_weights="none").to_dict()).pos_weights == "sqrt"  # saved: kept


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_every_shipped_preset_loads_by_name_and_says_what_it_is_for(preset):
    assert isinstance(load_config(preset), TrainConfig) and len(list_presets()[preset]) > 20


def test_a_preset_is_a_name_from_any_folder_or_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the presets travel inside the package
    assert load_config("fashion_probe").colour_histogram == 8
    (tmp_path / "mine.yaml").write_text("epochs: 3\n")
    assert load_config("mine.yaml").epochs == 3 and load_config(tmp_path / "mine.yaml").epochs == 3
    with pytest.raises(MhtagError, match="unknown preset 'fashion_prob'; choose from demo, fashion_finetune"):
        load_config("fashion_prob")
    with pytest.raises(MhtagError, match="config file other.yaml does not exist"):
        load_config("other.yaml")
