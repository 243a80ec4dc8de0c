"""Human instructions for trusting the mirror CA in the system store, browsers and HTTP libraries."""

from __future__ import annotations

import shlex
from pathlib import Path


def trust_instructions(ca_path: Path | str) -> str:
    """Step-by-step commands (Debian/Ubuntu, Chromium/NSS, Firefox, curl/requests/httpx)
    that make clients trust the CA certificate at `ca_path` (a PEM file)."""
    path = Path(ca_path).expanduser().absolute()
    quoted = shlex.quote(str(path))
    return f"""\
Trusting the mirror CA ({path})

Only do this on machines whose traffic you intend to inspect: anyone holding the CA key
(ca-key.pem, next to the certificate) can impersonate any website to these clients.

1. Debian / Ubuntu system store (OpenSSL, GnuTLS, curl, wget, Python's default paths):
     sudo cp {quoted} /usr/local/share/ca-certificates/mirror-ca.crt
     sudo update-ca-certificates
   (the file must end in .crt; undo: delete it, then run `sudo update-ca-certificates --fresh`)

2. Chromium / Chrome on Linux (per-user NSS database; needs the libnss3-tools package):
     mkdir -p "$HOME/.pki/nssdb"
     certutil -d sql:"$HOME/.pki/nssdb" -A -t "C,," -n mirror -i {quoted}
   (check: certutil -d sql:"$HOME/.pki/nssdb" -L ; undo: certutil -d sql:"$HOME/.pki/nssdb" -D -n mirror)

3. Firefox (its own store): either the UI - Settings > Privacy & Security > Certificates >
   View Certificates... > Authorities > Import..., pick the file, tick "Trust this CA to
   identify websites" - or an enterprise policy, e.g. /etc/firefox/policies/policies.json
   (or distribution/policies.json in the Firefox installation directory):
     {{"policies": {{"Certificates": {{"Install": ["{path}"]}}}}}}
   The profile's NSS database also works: certutil -d sql:<profile dir> -A -t "C,," -n mirror -i {quoted}

4. curl, Python requests / httpx / curl_cffi, for one shell:
     export SSL_CERT_FILE={quoted}        # OpenSSL default, httpx, Python ssl defaults
     export REQUESTS_CA_BUNDLE={quoted}   # requests
     export CURL_CA_BUNDLE={quoted}       # curl and curl_cffi (requests reads it too)
   These REPLACE the default bundle, so only the mirror CA is trusted. After step 1,
   point them at /etc/ssl/certs/ca-certificates.crt instead to trust both.
   One-off: curl --cacert {quoted} https://example.com/
"""
