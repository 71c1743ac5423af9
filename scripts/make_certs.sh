#!/usr/bin/env bash
# Certificates and keys for docker-compose.tls.yml, written to ./certs (or $CERTS_DIR):
#   ca.crt / ca.key               a self-signed CA
#   superlink.crt / superlink.key the SuperLink's certificate (names: superlink, localhost, 127.0.0.1)
#   supernode-<i> / supernode-<i>.pub  one EC (P-384) key pair per SuperNode, OpenSSH format,
#                                 for Flower's SuperNode authentication
# Usage: scripts/make_certs.sh [NUM_SUPERNODES=10]   (one key pair per SuperNode of docker-compose.yml)
set -euo pipefail
n="${1:-10}"
dir="${CERTS_DIR:-certs}"
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes -subj "/CN=fedattr-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:4096 -nodes -subj "/CN=superlink" -keyout superlink.key -out superlink.csr 2>/dev/null
printf 'subjectAltName=DNS:superlink,DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > superlink.ext
openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -sha256 \
    -extfile superlink.ext -out superlink.crt 2>/dev/null
rm -f superlink.csr superlink.ext ca.srl
for ((i = 0; i < n; i++)); do
    rm -f "supernode-$i" "supernode-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "supernode-$i"
done
# The containers run as root, but the keys must be readable by whoever mounts them.
chmod 644 ./*.crt ./*.pub
chmod 600 ./*.key  # ssh-keygen writes the SuperNode private keys 600 itself
echo "wrote $(pwd): ca.crt, superlink.crt/.key, $n SuperNode key pairs"
