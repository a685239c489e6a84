#!/usr/bin/env bash
# Fetch a client-credentials JWT access token from the oidc-provider fixture.
# Usage: get-token.sh ISSUER [RESOURCE] [SCOPE]
#   e.g. get-token.sh http://127.0.0.1:18765
# Prints the raw access token (compact JWS) on stdout; exits non-zero on error.
# Set RAW=1 to print the whole token-endpoint JSON response instead.
set -euo pipefail

issuer="${1:?usage: get-token.sh ISSUER [RESOURCE] [SCOPE]}"
resource="${2:-urn:nodeward:orders}"
scope="${3:-orders:read}"
client_id="${CLIENT_ID:-nodeward-test}"
client_secret="${CLIENT_SECRET:-nodeward-test-secret}"

# Discover the token endpoint (it is ISSUER/token for this fixture).
token_endpoint="$(curl -fsS "${issuer%/}/.well-known/openid-configuration" |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).token_endpoint))')"

# POST form body, client_secret_basic auth (id/secret contain no chars needing form-encoding).
response="$(curl -sS -X POST "$token_endpoint" \
  -u "${client_id}:${client_secret}" \
  -H 'Content-Type: application/x-www-form-urlencoded' \
  -H 'Accept: application/json' \
  --data-urlencode 'grant_type=client_credentials' \
  --data-urlencode "resource=${resource}" \
  --data-urlencode "scope=${scope}")"

if [[ "${RAW:-0}" == 1 ]]; then
  printf '%s\n' "$response"
  exit 0
fi

printf '%s' "$response" | node -e '
let s = "";
process.stdin.on("data", (d) => (s += d)).on("end", () => {
  const r = JSON.parse(s);
  if (!r.access_token) {
    console.error("token request failed: " + s);
    process.exit(1);
  }
  process.stdout.write(r.access_token + "\n");
});'
