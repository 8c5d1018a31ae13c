"""Bundles that cannot lie: a table of broken, edited or padded bundles, each refused on open with
the file or manifest key named and the supported way to make the change; the supported ways
themselves (edge-bundle retune, reseal, sign) with real files and real Ed25519 keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.bundle_cli import main as edge_bundle
from engines.bundle import FORMAT_VERSION, INTEGRITY, BundleError, open_bundle, seal


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    bundle, _ = small_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    return copy


def _edit(key_path: str | tuple[str, ...], value):
    """Change one manifest value as a hand edit would (the digest left as it was)."""

    def edit(bundle: Path) -> None:
        data = json.loads((bundle / "manifest.json").read_text())
        *parents, last = key_path.split(".") if isinstance(key_path, str) else key_path
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
        (bundle / "manifest.json").write_text(json.dumps(data, indent=2))

    return edit


def _resealed(change):
    """Change the content and recompute the digest: what a careful forger would do. Only the
    content checks (format, schema, files) stand in the way then; a signature is what stops it."""

    def edit(bundle: Path) -> None:
        data = json.loads((bundle / "manifest.json").read_text())
        change(data)
        (bundle / "manifest.json").write_text(json.dumps(seal(data)))

    return edit


def _without_digest(bundle: Path) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    del data[INTEGRITY]
    data["thresholds"]["image"] = 99.0
    (bundle / "manifest.json").write_text(json.dumps(data))


def make_unsealed(bundle: Path, version: int) -> None:
    """The manifest as a format-1 to -3 edge-calibrate wrote it: no digest, history or scores."""
    data = json.loads((bundle / "manifest.json").read_text())
    for key in (INTEGRITY, "history"):
        data.pop(key, None)
    data["thresholds"].pop("good_scores", None)
    data["format_version"] = version
    (bundle / "manifest.json").write_text(json.dumps(data))


def _write(name: str, content: bytes = b"\x7fELF"):
    return lambda bundle: (bundle / name).write_bytes(content)


def _flip_byte(name: str):
    def edit(bundle: Path) -> None:
        data = bytearray((bundle / name).read_bytes())
        data[1000] ^= 0xFF
        (bundle / name).write_bytes(bytes(data))

    return edit


BAD = [
    # (what, how the bundle is broken, what the refusal must say)
    ("threshold edited by hand", _edit("thresholds.image", 99.0), ["thresholds changed", "edge-bundle retune"]),
    ("format version edited", _edit("format_version", 3), ["format_version changed"]),
    ("encoder renamed", _edit("encoder.name", "efficientnet-lite2"), ["encoder changed"]),
    ("input size edited", _edit("input_size", [128, 128]), ["input_size changed"]),
    ("pixel threshold edited", _edit("thresholds.pixel", 0.0), ["thresholds changed"]),
    ("file list edited", _edit(("files", "flows.pt"), "0" * 64), ["files changed"]),
    ("key added", _edit("note", "hello"), ["note changed"]),
    ("digest removed and threshold edited", _without_digest, ["no digest"]),
    ("digest edited", _edit("integrity.manifest_sha256", "0" * 64), ["the digest itself"]),
    ("extra library in the bundle", _write("libinspect.so"), ["libinspect.so", "not part of the bundle"]),
    ("extra graph in the bundle", _write("encoder2.onnx"), ["encoder2.onnx", "not part of the bundle"]),
    ("extra folder in the bundle", lambda b: (b / "evaluation").mkdir(), ["evaluation", "not part of the bundle"]),
    ("hidden file in the bundle", _write(".flows.pt.swp"), [".flows.pt.swp", "not part of the bundle"]),
    ("modified graph", _flip_byte("flows.onnx"), ["flows.onnx", "checksum mismatch"]),
    ("truncated weights", lambda b: (b / "flows.pt").write_bytes((b / "flows.pt").read_bytes()[:1000]), ["flows.pt", "checksum mismatch"]),
    ("listed file missing", lambda b: (b / "encoder.onnx").unlink(), ["encoder.onnx", "listed in the manifest but missing"]),
    ("manifest missing", lambda b: (b / "manifest.json").unlink(), ["no manifest.json"]),
    ("manifest not JSON", _write("manifest.json", b"{not json"), ["manifest.json", "not valid JSON"]),
    ("manifest empty", _write("manifest.json", b""), ["manifest.json", "not valid JSON"]),
    ("manifest a list", _write("manifest.json", b"[1, 2]"), ["manifest.json", "not a manifest"]),
    ("manifest not UTF-8", _write("manifest.json", b"\xff\xfe{}"), ["manifest.json", "not valid JSON"]),
    ("older format without a digest", lambda b: make_unsealed(b, 3), ["format 3", "edge-bundle reseal"]),
    ("resealed: unknown format version", _resealed(lambda d: d.update(format_version=99)), ["format version 99", "re-calibrate"]),
    ("resealed: threshold as text", _resealed(lambda d: d["thresholds"].update(image="high")), ["thresholds.image"]),
    # `score > NaN` is never true: a NaN threshold would pass every part.
    ("resealed: NaN threshold", _resealed(lambda d: d["thresholds"].update(image=float("nan"))), ["thresholds.image"]),
    ("resealed: infinite scoring reference", _resealed(lambda d: d["scoring"].update(log_likelihood_reference=[float("-inf")] * len(d["scoring"]["log_likelihood_reference"]))), ["scoring.log_likelihood_reference"]),
    ("resealed: unknown key", _resealed(lambda d: d.update(colour_space="lab")), ["colour_space", "unknown key"]),
    ("resealed: file outside the bundle", _resealed(lambda d: d["files"].update({"../evil.so": "0" * 64})), ["../evil.so", "missing"]),
    ("resealed: a flow stride the encoder lacks", _resealed(lambda d: d["flow"].update(strides=[8, 64])), ["flow.strides"]),
]


@pytest.mark.parametrize("what, breakage, said", BAD, ids=[b[0] for b in BAD])
def test_a_broken_or_edited_bundle_is_refused_saying_what_and_how(bundle_copy, capsys, what, breakage, said):
    breakage(bundle_copy)
    with pytest.raises(BundleError) as refused:
        open_bundle(bundle_copy)
    for text in said:
        assert text in str(refused.value), f"{what}: {refused.value}"
    # The same through a command: exit 2, one message naming it, no traceback.
    assert edge_bundle(["show", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert said[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_retune_writes_a_new_bundle_with_its_history_and_keeps_the_old(bundle_copy, tmp_path, capsys):
    old = open_bundle(bundle_copy)
    new_path = tmp_path / "retuned"
    assert edge_bundle(["retune", str(bundle_copy), "-o", str(new_path), "--threshold", "7.5", "--why", "lighting changed", "--who", "anna"]) == 0
    new = open_bundle(new_path)
    assert new.manifest.thresholds.image == 7.5 and new.bundle_id != old.bundle_id
    (entry,) = new.manifest.history
    assert entry["who"] == "anna" and entry["why"] == "lighting changed" and entry["from_bundle"] == old.bundle_id
    assert entry["changes"]["thresholds.image"] == [old.manifest.thresholds.image, 7.5]
    assert open_bundle(bundle_copy).manifest == old.manifest  # the old one is untouched
    # A hand-set level says what it does on the held-out good parts, not the target it replaced.
    held = np.asarray(old.manifest.thresholds.good_scores)
    assert new.manifest.thresholds.method.endswith(f"; {int((held > 7.5).sum())} of the {len(held)} held-out good parts score above it")
    shown = capsys.readouterr().out
    assert "image threshold 7.5 (set by hand to 7.5" in shown and "false-reject target" not in shown.splitlines()[2]
    # A new target false-reject rate is chosen from the held-out scores the manifest keeps.
    frr_path = tmp_path / "frr"
    assert edge_bundle(["retune", str(new_path), "-o", str(frr_path), "--target-frr", "0.2", "--why", "too many false rejects"]) == 0
    retuned = open_bundle(frr_path)
    scores = np.asarray(retuned.manifest.thresholds.good_scores)
    assert len(scores) == old.manifest.thresholds.good_parts
    assert np.mean(scores > retuned.manifest.thresholds.image) <= 0.2 + 1e-9
    assert len(retuned.manifest.history) == 2
    refusals = [
        (["retune", str(bundle_copy), "-o", str(bundle_copy), "--threshold", "3", "--why", "x"], "another path"),
        (["retune", str(bundle_copy), "-o", str(new_path), "--threshold", "3", "--why", "x"], "already exists"),
        (["retune", str(bundle_copy), "-o", str(tmp_path / "n"), "--threshold", "-1", "--why", "x"], "positive"),
        (["retune", str(bundle_copy), "-o", str(tmp_path / "n"), "--target-frr", "1.5", "--why", "x"], "between 0 and 1"),
        (["retune", str(tmp_path / "none"), "-o", str(tmp_path / "n"), "--threshold", "3", "--why", "x"], "none: not found"),
    ]
    # --force replaces a bundle, never a folder of other things: here the one that holds the source.
    holder = bundle_copy.parent
    (holder / "notes.txt").write_text("not a bundle")
    refusals += [
        (["retune", str(bundle_copy), "-o", str(holder), "--force", "--threshold", "3", "--why", "x"], "not a bundle"),
        (["retune", str(bundle_copy), "-o", str(bundle_copy / "sub"), "--threshold", "3", "--why", "x"], "inside the bundle"),
        (["retune", str(bundle_copy), "-o", str(tmp_path / "n"), "--threshold", "3", "--why", " "], "--why"),
    ]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    for argv, said in refusals:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed
    assert open_bundle(bundle_copy).manifest == old.manifest
    # Replacing an earlier bundle is what --force is for.
    assert edge_bundle(["retune", str(bundle_copy), "-o", str(new_path), "--force", "--threshold", "4.5", "--why", "again"]) == 0
    assert open_bundle(new_path).manifest.thresholds.image == 4.5


def _exit_code(argv: list[str]) -> int:
    """edge-bundle's exit code, whether it returns it or argparse exits with it."""
    try:
        return edge_bundle(argv)
    except SystemExit as exit:
        return int(exit.code or 0)


def test_reseal_carries_an_older_bundle_over_and_records_it(bundle_copy, tmp_path):
    make_unsealed(bundle_copy, 3)
    with pytest.raises(BundleError, match="reseal"):
        open_bundle(bundle_copy)
    assert edge_bundle(["reseal", str(bundle_copy), "-o", str(tmp_path / "new"), "--why", "upgrade to 0.2"]) == 0
    resealed = open_bundle(tmp_path / "new")
    assert resealed.manifest.format_version == FORMAT_VERSION and resealed.manifest.history[0]["action"] == "reseal"
    # Without held-out scores, only a threshold given as a number can be set.
    assert edge_bundle(["retune", str(tmp_path / "new"), "-o", str(tmp_path / "t"), "--target-frr", "0.05", "--why", "x"]) == 2
    # A current bundle has nothing to reseal: refused, not rewritten with a history entry.
    assert edge_bundle(["reseal", str(tmp_path / "new"), "-o", str(tmp_path / "again"), "--why", "x"]) == 2
    assert not (tmp_path / "again").exists()


def _keys(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = directory / f"{directory.name}.pem"
    public = directory / f"{directory.name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_signed_bundles_open_only_with_the_right_public_key(bundle_copy, tmp_path):
    (tmp_path / "plant").mkdir()
    (tmp_path / "rogue").mkdir()
    private, public = _keys(tmp_path / "plant")
    rogue_private, _ = _keys(tmp_path / "rogue")
    with pytest.raises(BundleError, match="not signed"):
        open_bundle(bundle_copy, public_key=public)
    assert edge_bundle(["sign", str(bundle_copy), "--key", str(private)]) == 0
    assert open_bundle(bundle_copy, public_key=public).path == bundle_copy
    assert open_bundle(bundle_copy).path == bundle_copy  # a station without a key ignores the signature
    assert edge_bundle(["sign", str(bundle_copy), "--key", str(rogue_private)]) == 0
    with pytest.raises(BundleError, match="does not match"):
        open_bundle(bundle_copy, public_key=public)
    (bundle_copy / "manifest.sig").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="does not match"):
        open_bundle(bundle_copy, public_key=public)
    with pytest.raises(BundleError, match="a private key; give the public key"):  # the pair's keys swapped
        open_bundle(bundle_copy, public_key=private)
    assert edge_bundle(["sign", str(bundle_copy), "--key", str(public)]) == 2  # a public key cannot sign


def test_a_bundle_file_the_service_user_cannot_read_is_named_not_a_traceback(small_bundle, tmp_path_factory):
    """A file copied in by another user with mode 600: the service user's open says which file
    and what access it needs (it was a PermissionError traceback, at start under systemd)."""
    import os
    import stat
    import tempfile

    bundle, _ = small_bundle
    # A folder every user can reach (pytest's own is root's alone), with one file locked.
    root = Path(tempfile.mkdtemp(prefix="bundle-perm-"))
    try:
        root.chmod(0o755)
        copy = root / "bundle"
        shutil.copytree(bundle.path, copy)
        for item in [copy, *copy.iterdir()]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        (copy / "flows.onnx").chmod(stat.S_IRUSR | stat.S_IWUSR)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the service user: not root, so the file's mode applies
            os.close(read)
            said = b""
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                open_bundle(copy)
                said = b"opened"
            except BundleError as error:
                said = str(error).encode()
            except BaseException as error:  # noqa: BLE001 - reported to the parent, whatever it is
                said = f"{type(error).__name__}: {error}".encode()
            os.write(write, said[:2000])
            os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        said = os.read(read, 4000).decode()
        os.close(read)
    finally:
        shutil.rmtree(root)
    assert said.startswith(f"{copy / 'flows.onnx'}: cannot read (Permission denied)") and "read access" in said, said
