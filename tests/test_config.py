import pytest

from hpcmorph import config
from hpcmorph.config import ConfigError


def test_presets_load_and_validate():
    for name in config.PRESETS:
        cfg = config.load(name)
        assert cfg.run.name == name
        assert cfg.generate.bands == ["g", "r", "i"]


def test_unknown_key_names_it_and_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'generate.n_galaxy'.*'generate.n_galaxies'"):
        config.load("tiny", ["generate.n_galaxy=5"])


@pytest.mark.parametrize("override, message", [
    ("generate.n_galaxies=abc", r"'generate.n_galaxies': expected a value of type int, got 'abc'"),
    ("generate.n_galaxies=0", r"'generate.n_galaxies': 0 is out of range \[1"),
    ("generate.n_galaxies=true", r"type int, got True"),
    ("run.io=fast", r"'run.io': 'fast' is not one of 'auto', 'mpio', 'shards'"),
    ("generate.split=[0.5, 0.5]", r"'generate.split': expected 3 values, got 2"),
    ("generate.split=[0.5, 0.3, 0.3]", r"'generate.split' must sum to 1"),
    ("generate.spiral.hlr=[3, 1]", r"'generate.spiral.hlr' must be \[min, max\]"),
    ("generate.bands=[g, x]", r"'generate.bands': 'x' is not one of"),
    ("generate.label_band=g", None),
    ("generate.source=cutouts", r"generate.source is 'cutouts' but 'generate.cutouts.path' is not set"),
    ("generate.pixel_scale=.nan", r"expected a number, got NaN"),
])
def test_bad_values_name_the_field_and_what_is_allowed(override, message):
    if message is None:
        assert config.load("tiny", [override]).generate.label_band == "g"
        return
    with pytest.raises(ConfigError, match=message):
        config.load("tiny", [override])


def test_ints_are_accepted_where_floats_are_expected():
    cfg = config.load("tiny", ["generate.pixel_scale=1"])
    assert cfg.generate.pixel_scale == 1.0 and isinstance(cfg.generate.pixel_scale, float)


def test_user_file_extends_a_preset_and_errors_name_the_file(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("extends: tiny\ngenerate:\n  n_galaxies: 7\n")
    cfg = config.load(str(good))
    assert cfg.generate.n_galaxies == 7
    assert cfg.generate.image_size == config.load("tiny").generate.image_size
    assert cfg.run.name == "mine"

    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  n_galaxes: 7\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'generate.n_galaxes'"):
        config.load(str(bad))
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("generate: [\n")
        config.load(str(tmp_path / "broken.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="did you mean 'laptop'"):
        config.load("laptp")


def test_stored_yaml_round_trips_and_digest_tracks_content():
    cfg = config.load("tiny", ["generate.n_galaxies=9"])
    again = config.from_yaml_text(cfg.to_yaml())
    assert again.to_dict() == cfg.to_dict()
    assert again.digest("generate") == cfg.digest("generate")
    assert config.load("tiny").digest("generate") != cfg.digest("generate")
    # Sections not hashed do not change the digest.
    assert config.load("tiny", ["run.progress=true"]).digest("generate") == config.load("tiny").digest("generate")


def test_config_is_read_only_view():
    cfg = config.load("tiny")
    bands = cfg.generate.bands
    bands.append("x")
    assert cfg.generate.bands == ["g", "r", "i"]
    with pytest.raises(AttributeError, match="no section or key 'nope'"):
        cfg.generate.nope  # noqa: B018 (the attribute access itself must raise)
