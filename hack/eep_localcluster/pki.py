"""Certificates and keys for the local control plane: one CA, the apiserver's serving cert, the
service-account signing key and client certs (admin, controller-manager, scheduler, one per node agent).

Called by `controlplane.py` when it prepares a state directory. Files are PEM; a second call reuses what
exists so kubeconfigs stay valid across `up` runs that reuse the state directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)
_APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as file paths."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Where the control plane's key material lives inside `<state>/pki`."""

    root: Path

    @property
    def ca(self) -> CertPair:
        return CertPair(self.root / "ca.crt", self.root / "ca.key")

    @property
    def apiserver(self) -> CertPair:
        return CertPair(self.root / "apiserver.crt", self.root / "apiserver.key")

    @property
    def sa_key(self) -> Path:
        """Service-account token signing key (RSA, PEM, private)."""
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def client(self, name: str) -> CertPair:
        return CertPair(self.root / f"{name}.crt", self.root / f"{name}.key")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_pair(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    """A certificate for `key`, valid from five minutes ago (clock skew between processes) for `_VALIDITY`,
    signed by `signer`. A CA may sign certificates and CRLs; a leaf may sign and encipher keys (TLS). The
    `extensions` are added, not critical, after the basic constraints and key usage."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=not ca,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _issue(
    pair: CertPair,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
    *,
    server: bool,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    """Write a fresh key and a leaf certificate for it, signed by `ca`, for TLS server or client auth."""
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    extensions: list[x509.ExtensionType] = [x509.ExtendedKeyUsage([usage])]
    if sans:
        extensions.append(x509.SubjectAlternativeName(sans))
    cert = _certificate(subject, key, issuer=ca[0].subject, signer=ca[1], ca=False, extensions=extensions)
    _write_pair(pair, cert, key)


def _name(common_name: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def ensure_ca(pki: Pki) -> None:
    """Create the CA and the service-account key pair unless they exist."""
    pki.root.mkdir(parents=True, exist_ok=True)
    if not (pki.ca.cert.exists() and pki.ca.key.exists()):
        key = _key()
        name = _name("eep-localcluster-ca")
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = _certificate(name, key, issuer=name, signer=key, ca=True, extensions=[ski])
        _write_pair(pki.ca, cert, key)
    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        # RSA: every service-account token verifier supports RS256, not every one ES256.
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki.sa_key, sa)
        pki.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def ensure_apiserver_cert(pki: Pki, service_ip: str) -> None:
    """The apiserver's serving cert: valid for loopback, `localhost` and every `kubernetes.default...` name
    (pods reach the apiserver through those names via their /etc/hosts)."""
    if pki.apiserver.cert.exists() and pki.apiserver.key.exists():
        return
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in _APISERVER_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    _issue(pki.apiserver, _load_ca(pki.ca), _name("kube-apiserver"), server=True, sans=sans)


def ensure_local_serving_cert(pki: Pki, pair: CertPair, common_name: str) -> CertPair:
    """A serving cert for `localhost` and 127.0.0.1 at `pair`'s paths, signed by the cluster's CA (a webhook
    that the API server calls by URL); kept when it exists."""
    if not (pair.cert.exists() and pair.key.exists()):
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        _issue(pair, _load_ca(pki.ca), _name(common_name), server=True, sans=sans)
    return pair


def ensure_client_cert(pki: Pki, file_name: str, user: str, groups: tuple[str, ...] = ()) -> CertPair:
    """A client cert whose CN is the Kubernetes user name and whose O entries are its groups."""
    pair = pki.client(file_name)
    if not (pair.cert.exists() and pair.key.exists()):
        _issue(pair, _load_ca(pki.ca), _name(user, groups), server=False)
    return pair
