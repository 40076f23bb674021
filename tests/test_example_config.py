"""The shipped files in etc/ stay in step with the code that reads them."""

import pathlib
import re
import tomllib

import attrs

from mcproxy.config import SECTIONS, Config, load

ETC = pathlib.Path(__file__).resolve().parent.parent / "etc"
EXAMPLE = ETC / "mcproxy.example.toml"

_KEY_LINE = re.compile(r"^([a-z_]+)\s*=")


def test_example_loads_to_the_defaults():
    """Loaded with no environment, the example is exactly the embedded defaults."""
    assert load(str(EXAMPLE), environ={}) == Config()


def test_example_has_every_section_and_key_in_code_order():
    """Each attrs field of each section is spelled out, in the order config.py declares them."""
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert list(document) == list(SECTIONS)
    for name, cls in SECTIONS.items():
        assert list(document[name]) == [field.name for field in attrs.fields(cls)], name


def test_example_comments_every_key():
    """Every key line is directly below a comment that explains it."""
    previous = ""
    undocumented = []
    section = None
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]")
        match = _KEY_LINE.match(stripped)
        if match and not previous.startswith("#"):
            undocumented.append(f"{section}.{match.group(1)}")
        if stripped:
            previous = stripped
    assert undocumented == []


def test_example_env_override_still_wins():
    """The file is a base that the documented environment variables override."""
    environ = {
        "MCPROXY_STORE_URL": "memory:",
        "MCPROXY_CORS_ALLOWED_ORIGINS": "https://a.test, https://b.test",
    }
    config = load(str(EXAMPLE), environ=environ)
    assert config.store.url == "memory:"
    assert config.cors.allowed_origins == ("https://a.test", "https://b.test")
