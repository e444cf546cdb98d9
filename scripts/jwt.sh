#!/usr/bin/env bash
# Prints an HS256 JWT: scripts/jwt.sh SECRET ROLE [SECONDS_VALID]
set -euo pipefail
secret=${1:?secret}; role=${2:?role}; valid=${3:-315360000}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
claims=$(printf '{"iss":"pg_realtime-dev","role":"%s","iat":%d,"exp":%d}' "$role" "$now" $((now + valid)) | b64url)
signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -hmac "$secret" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$claims" "$signature"
