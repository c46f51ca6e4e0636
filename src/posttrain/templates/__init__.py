"""Chat templates shipped as .jinja files (never strings inside YAML)."""

from pathlib import Path

_DIR = Path(__file__).parent


def available_templates() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.jinja"))


def load_template(name: str) -> str:
    return (_DIR / f"{name}.jinja").read_text()
