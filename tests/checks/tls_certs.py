#!/usr/bin/python3
"""tls_certs.py — a test CA and a server certificate, made at test time with
`openssl req` (never fetched): ECDSA P-256, valid 2 days, the leaf for
DNS:localhost and IP:127.0.0.1, signed by the CA.

    tls_certs.py DIR      writes DIR/ca.pem, DIR/cert.pem, DIR/key.pem (and the CA's key)

As a module: make(dir) returns {"ca": ..., "cert": ..., "key": ...}.
Used by tests/checks/https_peers.py and tools/bench-http --tls. Standard
library and the openssl command only.
"""
import os
import subprocess
import sys

LEAF_EXTENSIONS = """subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make(directory):
    os.makedirs(directory, exist_ok=True)
    path = {name: os.path.join(directory, name) for name in
            ("ca.pem", "ca.key", "cert.pem", "key.pem", "leaf.csr", "leaf.ext")}
    p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *p256, "-keyout", path["ca.key"], "-out", path["ca.pem"], "-days", "2",
             "-subj", "/CN=ioloop test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", *p256, "-keyout", path["key.pem"], "-out", path["leaf.csr"], "-subj", "/CN=localhost")
    with open(path["leaf.ext"], "w") as ext:
        ext.write(LEAF_EXTENSIONS)
    _openssl("x509", "-req", "-in", path["leaf.csr"], "-CA", path["ca.pem"], "-CAkey", path["ca.key"],
             "-set_serial", "2", "-days", "2", "-extfile", path["leaf.ext"], "-out", path["cert.pem"])
    return {"ca": path["ca.pem"], "cert": path["cert.pem"], "key": path["key.pem"]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tls_certs.py DIR")
    make(sys.argv[1])
