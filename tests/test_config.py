import pytest

from caplab import ConfigError, load_config
from caplab.config import apply_overrides, config_from_json, load_recipe, recipe_kind
from caplab.recipe_files import recipe_names
from caplab.studies.percolation import load_percolation_config


def test_shipped_recipes_load_and_resolve_model_from_task():
    assert {"demo", "compositions", "compositions-direct"} <= set(recipe_names())
    for name in recipe_names():
        kind = recipe_kind(load_recipe(name)[1])
        if kind == "percolation":
            assert load_percolation_config(name)[2].entities_per_class > 0
            continue
        if kind in ("finetune", "compare", "normalization", "mode-connectivity"):  # covered by their own study tests
            continue
        cfg = load_config(name)
        task = cfg.make_task()
        if cfg.model_kind == "gpt":
            assert cfg.model.d_vocab >= task.vocab_size and cfg.model.n_ctx >= task.seq_len
        else:
            assert (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size) == task.image_shape
            assert cfg.model.n_classes == task.n_classes
    assert load_config("compositions-direct").task["format"] == "direct"


def test_model_kinds_fit_their_tasks():
    cfg = load_config("shapes", ["model.kind=resnet", "model.depth=8", "model.norm=group", "task.target=colour"])
    assert cfg.model_kind == "resnet" and cfg.model.norm == "group" and cfg.model.n_classes == 4
    assert config_from_json(__import__("json").dumps(cfg.to_dict())).model == cfg.model  # the kind survives a round trip
    assert "kind" not in load_config("demo").to_dict()["model"]  # GPT configs read as before model kinds
    with pytest.raises(ConfigError, match="model.kind=gpt cannot read task 'shapes' \\(images\\); kinds that fit: mlp, vgg, resnet"):
        load_config("shapes", ["model.kind=gpt"])
    with pytest.raises(ConfigError, match="model.kind=vgg cannot read task 'compositions' \\(tokens\\); kinds that fit: gpt"):
        load_config("demo", ["model.kind=vgg"])
    with pytest.raises(ConfigError, match="bad value 'transformer' for 'model.kind'; valid: gpt, mlp, vgg, resnet"):
        load_config("shapes", ["model.kind=transformer"])
    with pytest.raises(ConfigError, match="unknown model.norm 'bn'; valid: none, batch"):
        load_config("shapes", ["model.norm=bn"])
    with pytest.raises(ConfigError, match="model.image_size=32 does not fit task 'shapes' \\(image_size = 28\\)"):
        load_config("shapes", ["model.image_size=32"])
    with pytest.raises(ConfigError, match="mat.every .* needs model.kind=gpt"):
        load_config("shapes", ["mat.every=10"])
    assert load_config("shapes", ["train.ensemble=2"]).train.ensemble == 2  # every model kind ensembles


def test_integral_numbers_in_scientific_notation_fill_integer_fields():
    assert load_config("demo", ["train.steps=1e5"]).train.steps == 100_000
    assert load_config("demo", ["train.steps=2.0e3"]).train.steps == 2000
    with pytest.raises(ConfigError, match="bad value 1.5e3 for 'train.steps'; expected an integer|bad value 1500.5"):
        load_config("demo", ["train.steps=1.5005e3"])


def test_overrides_set_typed_fields():
    cfg = load_config("demo", ["train.steps=2000", "train.seed=1", "train.batch_size=8", "model.d_model=64",
                               "task.n_depths=4", "train.lr=3e-4", "task.permutation_depths=[0]"])
    assert (cfg.train.steps, cfg.train.seed, cfg.train.batch_size, cfg.model.d_model) == (2000, 1, 8, 64)
    assert cfg.task["n_depths"] == 4 and cfg.train.lr == pytest.approx(3e-4) and cfg.task["permutation_depths"] == [0]
    assert cfg.model.d_mlp == 256  # follows d_model unless set


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown key 'train.stepz'; valid: steps, batch_size"),
        ("model.width=3", "unknown key 'model.width'; valid: n_layers"),
        ("task.depths=3", "unknown key 'task.depths'; valid: n_tokens"),
        ("optim.lr=3", "unknown key 'optim.lr'; valid sections: task, model, train"),
        ("train.steps=many", "bad value 'many' for 'train.steps'; expected an integer"),
        ("train.compile=maybe", "bad value 'maybe' for 'train.compile'; expected true or false"),
        ("task.format=diagonal", "bad value 'diagonal' for 'task.format'; valid: step_by_step, direct"),
        ("task.name=nope", "bad value 'nope' for 'task.name'; valid: compositions"),
        ("train.steps", "bad override 'train.steps'; expected KEY=VALUE"),
        ("model.d_vocab=4", "model.d_vocab=4 is smaller than the task's vocabulary"),
        ("model.n_heads=3", "not divisible"),
        ("train.steps=0", "train.steps must be at least 1"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("demo", [override])


def test_unknown_recipe_lists_choices():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; valid: .*demo"):
        load_config("nope")


def test_recipe_file_and_roundtrip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task:\n  name: compositions\n  n_depths: 2\n  n_train_compositions: 3\ntrain:\n  steps: 7\n")
    cfg = load_config(str(path))
    assert cfg.recipe == "mine" and cfg.train.steps == 7 and cfg.task["n_depths"] == 2
    import json

    again = config_from_json(json.dumps(cfg.to_dict()))
    assert again.to_dict() == cfg.to_dict()
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_apply_overrides_does_not_mutate_input():
    data = {"train": {"steps": 1}}
    out = apply_overrides(data, ["train.steps=2"])
    assert data["train"]["steps"] == 1 and out["train"]["steps"] == 2


def test_old_train_mat_keys_read_as_the_mat_and_diagnostics_sections():
    old = load_config("demo", ["train.mat_every=10", "train.mat_rule=quantile", "train.mat_lambda=raw",
                               "train.spectral_diagnostics_every=5"])
    new = load_config("demo", ["mat.every=10", "mat.rule=quantile", "mat.lambda_scale=raw", "diagnostics.spectral_every=5"])
    assert old.mat == new.mat and old.diagnostics == new.diagnostics and old.mat.every == 10
    assert config_from_json(__import__("json").dumps(old.to_dict())).mat == old.mat
    with pytest.raises(ConfigError, match="train.mat_every=10 and mat.every=20 disagree"):
        load_config("demo", ["train.mat_every=10", "mat.every=20"])
    with pytest.raises(ConfigError, match="unknown key 'mat.everyy'; valid: every, rule"):
        load_config("demo", ["mat.everyy=3"])
