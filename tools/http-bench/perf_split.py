"""Splits a flat perf profile of a TLS server into where its CPU goes. Reads
`perf report --no-children --sort dso,sym --stdio` on stdin and prints one
tab-separated line: NAME MODE and the share (% of samples) of

  symmetric crypto   libcrypto's record protection: AES-GCM, GHASH, ChaCha20-Poly1305
  handshake crypto   libcrypto's public-key and key-schedule work: P-256 / X25519,
                     ECDSA, big numbers, SHA-2, HKDF, certificates, the DRBG
  other OpenSSL      libssl (state machine, records) and the rest of libcrypto
                     (allocation, locks, provider lookups, error queue)
  kernel             [kernel.kallsyms] (TCP, syscalls, scheduling)
  server             the server's own code (helloworld, libioloop*, nginx)
  libc
  other

Debian's libcrypto has no .symtab: its assembly (aesni_gcm_*, ecp_nistz256_*)
and static functions show as bare addresses. Those are named here after the
nearest exported symbol below them (nm -D), which places them in their
source file's neighbourhood (EC_GFp_* for the P-256 code, CRYPTO_gcm128_*
for GCM): an approximation, good for a split, not for a symbol ranking.

    perf_split.py NAME MODE [TOP] < report.txt    (TOP: also print the TOP heaviest entries, resolved, on stderr)
"""
import bisect
import re
import subprocess
import sys

SYMMETRIC = re.compile(r"aes|gcm|ghash|chacha|poly1305|ctr32|cipher|EVP_(En|De)crypt", re.I)
HANDSHAKE = re.compile(r"ecp_|p256|nistz|x25519|ecx|bn_|ec_|ecdsa|ecdh|mont|sha|hkdf|hmac|kdf|"
                       r"x509|asn1|der_|pkey|rand|drbg|curve|point|felem|scalar|inverse|GF2m|GFp|"
                       # Debian 12's libcrypto 3.0: the unnamed code after DSO_global_lookup is
                       # crypto/ec/curve25519.c (X25519; seen in its disassembly: 10-limb cswaps)
                       r"DSO_global_lookup", re.I)
# The unnamed code after X509_get0_reject_objects is providers/implementations:
# OSSL_PARAM handling around every cipher call (seen in its disassembly), not
# certificate work.
PROVIDER_GLUE = {"~X509_get0_reject_objects"}
LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


_exports = {}


def resolve(dso, sym):
    """A bare address in a shared library: the nearest exported symbol below it."""
    if not sym.startswith("0x") or not dso.startswith(("libcrypto", "libssl")):
        return sym
    if dso not in _exports:
        table = []
        try:
            path = next(line.split()[-1] for line in subprocess.run(["ldconfig", "-p"], capture_output=True,
                        text=True).stdout.splitlines() if line.strip().startswith(dso + " "))
            out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True).stdout
            table = sorted((int(f[0], 16), f[2].split("@")[0]) for f in map(str.split, out.splitlines()) if len(f) == 3)
        except (StopIteration, OSError):
            pass
        _exports[dso] = ([a for a, _ in table], [n for _, n in table])
    addrs, names = _exports[dso]
    i = bisect.bisect_right(addrs, int(sym, 16)) - 1
    return f"~{names[i]}" if i >= 0 else sym


def category(dso, kind, sym):
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libcrypto"):
        if sym in PROVIDER_GLUE:
            return "other OpenSSL"
        if SYMMETRIC.search(sym):
            return "symmetric crypto"
        if HANDSHAKE.search(sym):
            return "handshake crypto"
        return "other OpenSSL"
    if dso.startswith("libssl"):
        return "other OpenSSL"
    if dso.startswith("libc.so") or dso.startswith("libc-"):
        return "libc"
    if dso.startswith(("helloworld", "libioloop", "nginx")):
        return "server"
    return "other"


CATEGORIES = ["symmetric crypto", "handshake crypto", "other OpenSSL", "kernel", "server", "libc", "other"]
shares = dict.fromkeys(CATEGORIES, 0.0)
top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
entries = []
for line in sys.stdin:
    m = LINE.match(line)
    if m:
        share, dso, kind = float(m.group(1)), m.group(2), m.group(3)
        sym = resolve(dso, m.group(4).strip())
        shares[category(dso, kind, sym)] += share
        entries.append((share, dso, sym))
# Addresses resolved to one neighbour add up: rank by the resolved name.
merged = {}
for share, dso, sym in entries:
    merged[(dso, sym)] = merged.get((dso, sym), 0.0) + share
for (dso, sym), share in sorted(merged.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {share:5.1f}%  {dso:18} {sym}  [{category(dso, '.', sym)}]", file=sys.stderr)
print("\t".join([sys.argv[1], sys.argv[2]] + [f"{shares[c]:.1f}" for c in CATEGORIES]))
