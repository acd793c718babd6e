#!/usr/bin/env python3
"""Make a self-signed TLS certificate for the WSS/HTTPS port (``--mode wss|both``).

Usage::

    python generate_ssl_cert.py                       # ./key.pem + ./cert.pem for localhost
    python generate_ssl_cert.py stt.example.com 192.168.0.10   # add names / IPs clients use
    python generate_ssl_cert.py --ec --days 365 --force

Only the ``cryptography`` package is needed (no ``openssl`` binary). The subjectAltName always holds
``localhost``, ``127.0.0.1`` and ``::1`` plus every name or IP address given on the command line.

The certificate is a self-signed *leaf* (basicConstraints CA:FALSE). OpenSSL-based clients (Python's
``ssl.create_default_context(cafile="cert.pem")``, ``curl --cacert cert.pem``, Node) and Go accept a
self-signed certificate placed in their trust store as its own trust anchor, so CA:TRUE is not needed;
Firefox refuses a CA:TRUE certificate used by a server (MOZILLA_PKIX_ERROR_CA_CERT_USED_AS_END_ENTITY).
No keyUsage extension is written on purpose: OpenSSL 1.1.x only treats a certificate as self-signed
when its keyUsage (if present) allows keyCertSign, and keyCertSign on a non-CA is rejected by strict
verification (Python 3.13 turns VERIFY_X509_STRICT on by default). SubjectKeyIdentifier and a matching
AuthorityKeyIdentifier keep strict verification happy.

The server can call :func:`generate_self_signed` itself to create a pair when none exists.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["build_certificate", "describe", "generate_self_signed", "main"]

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 825  # the longest validity Apple platforms accept for TLS server certificates
DEFAULT_KEY_SIZE = 2048


def _parse_name(name: str):
    """Return an ``x509.GeneralName`` for a DNS name or an IP address."""
    from cryptography import x509

    text = name.strip()
    if text.startswith("[") and text.endswith("]"):  # allow "[::1]" as written in URLs
        text = text[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or any(ch.isspace() for ch in text) or "/" in text:
        raise ValueError(f"not a host name or IP address: {name!r}")
    # x509.DNSName wants an A-label (punycode) for internationalised names
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"not a valid host name: {name!r} ({exc})") from exc
    return x509.DNSName(text.lower())


def _unique_names(names: Iterable[str]) -> list:
    """Default names first, then the extra ones, without duplicates, as GeneralNames."""
    seen = set()
    result = []
    for name in (*DEFAULT_NAMES, *names):
        general_name = _parse_name(name)
        if general_name not in seen:
            seen.add(general_name)
            result.append(general_name)
    return result


def build_certificate(
    names: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    key_size: int = DEFAULT_KEY_SIZE,
    use_ec: bool = False,
    common_name: str | None = None,
):
    """Create a private key and a self-signed certificate in memory.

    Returns:
        ``(private_key, certificate)`` as ``cryptography`` objects.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days < 1:
        raise ValueError("days must be at least 1")
    if use_ec:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        if key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused by current TLS clients")
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)

    alt_names = _unique_names(names)
    if common_name is None:
        # the first extra name is what the operator cares about; fall back to localhost
        common_name = names[0] if names else "localhost"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "whisper-stt self-signed"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # a few minutes back so a client whose clock is slightly behind still accepts it
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    return key, certificate


def _write_atomically(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is created with ``mode`` from the start (no window in which a private key is
    world-readable) and then renamed into place. Without ``overwrite`` the final step is a hard link,
    which fails if the target appeared in the meantime, so an existing file is never replaced.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                raise
            except OSError:
                # file systems without hard links: best effort check, then rename
                if path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    try:  # make the rename durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def generate_self_signed(
    key_path: str | os.PathLike = "./key.pem",
    cert_path: str | os.PathLike = "./cert.pem",
    names: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    key_size: int = DEFAULT_KEY_SIZE,
    use_ec: bool = False,
    overwrite: bool = False,
    common_name: str | None = None,
) -> tuple[Path, Path]:
    """Create ``key_path`` (mode 0600) and ``cert_path`` (mode 0644) with a self-signed certificate.

    Args:
        key_path: where the PEM private key (PKCS#8, unencrypted) goes.
        cert_path: where the PEM certificate goes.
        names: extra DNS names / IP addresses for the subjectAltName, besides localhost, 127.0.0.1, ::1.
        days: validity in days.
        key_size: RSA key size in bits (ignored with ``use_ec``).
        use_ec: make an ECDSA P-256 key instead of RSA.
        overwrite: replace existing files; otherwise ``FileExistsError`` is raised and nothing is written.
        common_name: subject CN; defaults to the first extra name or ``localhost``.

    Returns:
        ``(key_path, cert_path)`` as ``Path`` objects.

    Raises:
        FileExistsError: a target exists and ``overwrite`` is false.
        ValueError: a bad name, key size or validity.
    """
    from cryptography.hazmat.primitives import serialization

    key_path = Path(key_path)
    cert_path = Path(cert_path)
    if key_path.resolve() == cert_path.resolve():
        raise ValueError("key and certificate must be different files")
    if not overwrite:
        existing = [str(p) for p in (key_path, cert_path) if p.exists()]
        if existing:
            raise FileExistsError(
                f"refusing to overwrite existing file(s): {', '.join(existing)} (use --force to replace)"
            )

    key, certificate = build_certificate(
        names=names, days=days, key_size=key_size, use_ec=use_ec, common_name=common_name
    )
    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)

    # key first: a certificate without its key is useless, a stray key is harmless and private
    _write_atomically(key_path, key_pem, 0o600, overwrite)
    try:
        _write_atomically(cert_path, cert_pem, 0o644, overwrite)
    except BaseException:
        if not overwrite:  # we created the key a moment ago; do not leave half a pair behind
            try:
                key_path.unlink()
            except OSError:
                pass
        raise
    return key_path, cert_path


def describe(cert_path: str | os.PathLike) -> dict:
    """Subject, SANs, validity and SHA-256 fingerprint of a PEM certificate (for printing)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return {
        "subject": certificate.subject.rfc4514_string(),
        "dns": san.get_values_for_type(x509.DNSName),
        "ip": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "sha256": ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    }


def _print_summary(key_path: Path, cert_path: Path) -> None:
    info = describe(cert_path)
    host = info["dns"][1] if len(info["dns"]) > 1 else "localhost"
    print(f"Private key : {key_path.resolve()} (mode 0600, keep it secret)")
    print(f"Certificate : {cert_path.resolve()}")
    print(f"Subject     : {info['subject']}")
    print(f"Names       : {', '.join(info['dns'] + info['ip'])}")
    print(f"Valid until : {info['not_after']}")
    print(f"SHA-256     : {info['sha256']}")
    print()
    print("Start the TLS server with it:")
    print(f"  python whisper_server.py --mode wss --ssl-key {key_path} --ssl-cert {cert_path}")
    print()
    print("This certificate is self-signed; clients must be told to trust it:")
    print(f"  curl:     curl --cacert {cert_path} https://{host}:8766/health")
    print(f"  Python:   ssl.create_default_context(cafile='{cert_path}')")
    print("  Debian/Ubuntu system store:")
    print(
        f"            sudo cp {cert_path} /usr/local/share/ca-certificates/whisper-stt.crt"
        " && sudo update-ca-certificates"
    )
    print(f"  Browser:  open https://{host}:8766/ once and accept the warning, or import {cert_path}")
    print("            as a trusted certificate (needed before a page can open wss:// to this server).")
    print("Clients must connect with one of the names listed above; add others as arguments, e.g.")
    print("  python generate_ssl_cert.py --force my-server.lan 192.168.0.10")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Create a self-signed TLS key and certificate for whisper_server.py --mode wss/both.",
        epilog="localhost, 127.0.0.1 and ::1 are always included in the subjectAltName.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME_OR_IP",
        help="extra DNS names or IP addresses clients use to reach the server",
    )
    parser.add_argument("--key", default="./key.pem", help="private key output (default: ./key.pem)")
    parser.add_argument("--cert", default="./cert.pem", help="certificate output (default: ./cert.pem)")
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default: {DEFAULT_DAYS})"
    )
    key_type = parser.add_mutually_exclusive_group()
    key_type.add_argument(
        "--key-size",
        type=int,
        default=DEFAULT_KEY_SIZE,
        help=f"RSA key size in bits (default: {DEFAULT_KEY_SIZE})",
    )
    key_type.add_argument("--ec", action="store_true", help="use an ECDSA P-256 key instead of RSA")
    parser.add_argument("--cn", default=None, help="subject common name (default: first name or localhost)")
    parser.add_argument("--force", action="store_true", help="overwrite existing key/certificate files")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        key_path, cert_path = generate_self_signed(
            args.key,
            args.cert,
            names=args.names,
            days=args.days,
            key_size=args.key_size,
            use_ec=args.ec,
            overwrite=args.force,
            common_name=args.cn,
        )
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"error: the 'cryptography' package is required ({exc}); run ./install.sh "
            "or pip install cryptography",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: cannot write key/certificate: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        _print_summary(key_path, cert_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
