"""Ed25519 key files: made by ``key new``, read by the commands that sign or check a seal.

The private key is a PKCS#8 PEM file, encrypted with a passphrase unless the operator
asks otherwise; the public key is a SubjectPublicKeyInfo PEM file. Both are what
``openssl pkey`` reads, so a key can be inspected, or made, with tools people trust.
A key's ID is the first 16 hex digits of the SHA-256 of its 32 raw public bytes:
shown by ``key new`` and wherever a signature is reported.

``cryptography`` is imported only here, and only by a command that was given a key:
it costs about 27 ms, a tenth of a small check.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import os
import stat
import sys
from dataclasses import dataclass, field

from integrityd.errors import SignatureError, UsageError
from integrityd.writers import refuse_if_changeable

PASSPHRASE_ENV = "INTEGRITYD_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


def key_id(raw: bytes) -> str:
    """The short ID of the public key whose raw bytes are ``raw``."""
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key: checks seals. Plain bytes, so that it can go to the workers."""

    raw: bytes

    @property
    def id(self) -> str:
        """The key's short ID."""
        return key_id(self.raw)

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An unlocked private key, and its public half. Never printed, never logged."""

    raw: bytes = field(repr=False)
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        return Ed25519PrivateKey.from_private_bytes(self.raw).sign(data)


def passphrase(file: str | None, *, confirm: bool = False) -> bytes | None:
    """The passphrase: from ``file``, else $INTEGRITYD_PASSPHRASE, else the terminal.

    None where there is none of these (no terminal): the caller says what to give.
    A passphrase file holds the passphrase on its first line.
    """
    if file is not None:
        try:
            with open(file, "rb") as f:
                text = f.read(4096)
        except OSError as e:
            raise UsageError(f"cannot read --passphrase-file {file}: {e.strerror}") from e
        first = text.splitlines()[0] if text.strip() else b""
        if not first:
            raise UsageError(f"--passphrase-file {file} is empty")
        return first
    if env := os.environ.get(PASSPHRASE_ENV):
        return os.fsencode(env)
    if not sys.stdin.isatty():
        return None
    try:
        given = getpass.getpass("passphrase for the signing key: ")
        if confirm and getpass.getpass("the same passphrase again: ") != given:
            raise UsageError("the two passphrases differ; nothing was written")
    except EOFError:
        return None
    if not given:
        raise UsageError("an empty passphrase; use --no-passphrase for a key without one")
    return given.encode()


def new(private_path: str, public_path: str, secret: bytes | None) -> PublicKey:
    """Write a new key pair; ``secret`` None leaves the private key unencrypted.

    Neither file is overwritten (O_EXCL): a key that signed baselines is not to be lost
    to a typo. The private key is created 0600, the public key 0644.
    """
    from cryptography.hazmat.primitives import serialization as ser  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise UsageError(f"{path} exists; integrityd does not overwrite a key file")
    if os.path.abspath(private_path) == os.path.abspath(public_path):
        raise UsageError("--private and --public name the same file")
    key = Ed25519PrivateKey.generate()
    encryption: ser.KeySerializationEncryption = (
        ser.BestAvailableEncryption(secret) if secret is not None else ser.NoEncryption()
    )
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    public = key.public_key()
    public_pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    _create(private_path, private_pem, 0o600)
    try:
        _create(public_path, public_pem, 0o644)
    except UsageError:
        with contextlib.suppress(OSError):
            os.unlink(private_path)  # half a pair is of no use, and a private key a risk
        raise
    return PublicKey(public.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))


def _create(path: str, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away: give them back exactly
        os.write(fd, data)
        os.fsync(fd)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64 << 10)
    except OSError as e:
        raise SignatureError(f"cannot read the {what} {path}: {e.strerror}") from e


# An Ed25519 SubjectPublicKeyInfo is these 12 bytes of DER, then the 32 bytes of the key
# (RFC 8410). Read without cryptography: a reader imports it only to check a signature.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def load_public(path: str) -> PublicKey:
    """The public key in the PEM file ``path``."""
    harm = "they could put in a key of their own, and a baseline they signed would check valid"
    refuse_if_changeable(path, "the public key", harm, SignatureError)
    data = _read(path, "public key")
    lines = data.decode("ascii", "replace").strip().splitlines()
    der = b""
    if (
        lines
        and lines[0] == "-----BEGIN PUBLIC KEY-----"
        and lines[-1] == "-----END PUBLIC KEY-----"
    ):
        try:
            der = base64.b64decode("".join(lines[1:-1]), validate=True)
        except binascii.Error:
            der = b""
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        msg = f"{path} is not an Ed25519 public key in PEM; give the file 'key new --public' wrote"
        raise SignatureError(msg)
    return PublicKey(der[len(_SPKI_PREFIX) :])


def load_private(path: str, passphrase_file: str | None) -> SigningKey:
    """The private key in ``path``, unlocked with the passphrase if it has one."""
    from cryptography.hazmat.primitives import serialization as ser  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    data = _read(path, "signing key")
    if b"PRIVATE KEY-----" not in data:
        raise SignatureError(f"{path} is not a PEM private key; give the file 'key new' wrote")
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    secret = None
    if encrypted:
        secret = passphrase(passphrase_file)
        if secret is None:
            msg = (
                f"the signing key {path} is protected by a passphrase and there is no "
                f"terminal to ask for it: give --passphrase-file or set {PASSPHRASE_ENV}"
            )
            raise SignatureError(msg)
    else:
        _warn_if_exposed(path)
    try:
        key = ser.load_pem_private_key(data, password=secret)
    except (ValueError, TypeError) as e:
        if encrypted:
            msg = f"cannot unlock the signing key {path}: wrong passphrase"
        else:
            msg = f"{path} is not a usable private key ({e})"
        raise SignatureError(msg) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    raw = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return SigningKey(raw, PublicKey(public))


def _warn_if_exposed(path: str) -> None:
    """An unencrypted private key that others may read: say so (ssh would refuse it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        from integrityd import logsetup  # noqa: PLC0415

        logsetup.get_logger().warning(
            "signing_key_exposed",
            message=f"the signing key {path} has no passphrase and others may read it "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}, or keep it off the host",
        )
