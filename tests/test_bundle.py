import json
import shutil

import pytest

from engines.bundle import BundleError, open_bundle


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    bundle, _ = small_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    return copy


def test_modified_file_is_refused(bundle_copy):
    with open(bundle_copy / "flows.onnx", "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"flows\.onnx: checksum mismatch"):
        open_bundle(bundle_copy)


def test_truncated_weights_are_refused(bundle_copy):
    path = bundle_copy / "flows.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"flows\.pt: checksum mismatch"):
        open_bundle(bundle_copy)


def test_unknown_format_version_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99.*re-calibrate"):
        open_bundle(bundle_copy)


def test_missing_file_and_missing_manifest(bundle_copy, tmp_path):
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.onnx: listed in the manifest but missing"):
        open_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path)
