from dataclasses import dataclass, field

import pytest

from slava.config import ConfigError, from_dict, load_yaml


@dataclass
class Inner:
    rank: int = 8
    names: list[str] = field(default_factory=lambda: ["q", "v"])


@dataclass
class Outer:
    lr: float = 1e-3
    bf16: bool = True
    mode: str = "int8"
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_nested_values_load_with_types():
    cfg = from_dict(Outer, {"lr": 2, "inner": {"rank": 4, "names": ["o"]}, "path": None})
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float)
    assert cfg.inner == Inner(rank=4, names=["o"])
    assert cfg.bf16 is True


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="inner.ranks"):
        from_dict(Outer, {"inner": {"ranks": 4}})


@pytest.mark.parametrize(
    "data, key",
    [({"lr": "fast"}, "lr"), ({"bf16": 1}, "bf16"), ({"inner": {"rank": 2.5}}, "inner.rank"), ({"inner": 3}, "inner")],
)
def test_wrong_type_is_named(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(Outer, data)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ConfigError, match="r.yaml"):
        load_yaml(Outer, bad)
    good = tmp_path / "g.yaml"
    good.write_text("mode: nf4\ninner:\n  rank: 16\n")
    assert load_yaml(Outer, good).inner.rank == 16
