"""Signed bundles: an Ed25519 signature of manifest.json, for plants that want to know a bundle
came from their own calibration host. The manifest lists every file's sha256, so signing it
covers the whole bundle.

Keys are PEM files, made for example with
  openssl genpkey -algorithm ed25519 -out bundle-signing.pem
  openssl pkey -in bundle-signing.pem -pubout -out bundle-signing.pub
The private key stays on the calibration host; the daemon's config names the public key."""

from __future__ import annotations

from pathlib import Path

from engines.atomic_file import write_atomically
from engines.bundle import MANIFEST, SIGNATURE, BundleError


class SigningError(BundleError):
    """A key or signature that cannot be used; the message names the file."""


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError("signed bundles need the 'cryptography' package: pip install cryptography") from None
    return InvalidSignature, serialization, ed25519


def _read_key(path: Path, private: bool):
    _, serialization, ed25519 = _crypto()
    kind = "private" if private else "public"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningError(f"{path}: cannot read the {kind} key ({error.strerror or error})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None) if private else serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        # The two keys of a pair are easy to swap in a config: say which one this is.
        if not private and b"PRIVATE KEY-----" in data:
            raise SigningError(f"{path}: a private key; give the public key (openssl pkey -in {path.name} -pubout -out signing.pub) and keep the private one off the line") from None
        if private and b"PUBLIC KEY-----" in data:
            raise SigningError(f"{path}: a public key; signing needs the private key of the pair") from None
        raise SigningError(f"{path}: not a PEM {kind} key without a passphrase") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SigningError(f"{path}: not an Ed25519 {kind} key (make one with: openssl genpkey -algorithm ed25519)")
    return key


def check_public_key(path: Path) -> None:
    """Refuse an unreadable or wrong public key up front (config validation)."""
    _read_key(path, private=False)


def check_private_key(path: Path) -> None:
    """Refuse an unreadable or wrong private key before the long work that it would sign."""
    _read_key(path, private=True)


def sign_manifest(bundle_path: Path, private_key: Path) -> None:
    """Write BUNDLE/manifest.sig for the manifest as it is now."""
    key = _read_key(private_key, private=True)
    signature = key.sign((bundle_path / MANIFEST).read_bytes())
    write_atomically(bundle_path / SIGNATURE, signature)


def verify_manifest(bundle_path: Path, manifest: bytes, public_key: Path) -> None:
    """Raise SigningError unless BUNDLE/manifest.sig is the public key's signature of `manifest`."""
    InvalidSignature, _, _ = _crypto()
    key = _read_key(public_key, private=False)
    signature_path = bundle_path / SIGNATURE
    try:
        signature = signature_path.read_bytes()
    except FileNotFoundError:
        raise SigningError(
            f"{bundle_path}: not signed (no {SIGNATURE}), and this station accepts only bundles signed for {public_key}; sign it with `edge-bundle sign {bundle_path} --key PRIVATE.pem`"
        ) from None
    except OSError as error:
        raise SigningError(f"{signature_path}: cannot read ({error.strerror or error})") from None
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise SigningError(f"{signature_path}: the signature does not match {public_key} (signed with another key, or the manifest changed after signing); this bundle is refused") from None
