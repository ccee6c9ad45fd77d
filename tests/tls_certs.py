"""A self-made certificate authority for tests of TLS connections (the MariaDB test server's): a CA,
a server certificate for 127.0.0.1/localhost and a client certificate signed by it, written as PEM
files. Made with `cryptography` (installed with the project's dependencies), no openssl program."""
from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: str, stem: str, key, cert) -> tuple[str, str]:
    key_path, cert_path = os.path.join(folder, f"{stem}-key.pem"), os.path.join(folder, f"{stem}.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make(folder: str, name: str = "fatp-test-ca") -> dict:
    """{"ca", "server_cert", "server_key", "client_cert", "client_key"}: PEM paths in `folder`."""
    os.makedirs(folder, exist_ok=True)
    ca_key = _key()
    ca = _cert(name, ca_key, _name(name), ca_key, ca=True)
    ca_path, _ = _write(folder, name, ca_key, ca)
    out = {"ca": ca_path}
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for who, alt in (("server", san), ("client", None)):
        key = _key()
        out[f"{who}_cert"], out[f"{who}_key"] = _write(folder, f"{name}-{who}", key,
                                                        _cert("localhost" if who == "server" else f"{name} {who}", key, ca.subject, ca_key, False, alt))
    return out
