#!/usr/bin/env bash
# Checks the deploy files: systemd units parse (systemd-analyze verify, when
# present; required under FANOUT_REQUIRE_REDIS=1, as in CI) with the
# ExecStart binaries pointed at a fresh build, and every crontab line has
# five time fields, a user and a command.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath bin)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if command -v systemd-analyze >/dev/null 2>&1; then
  for u in deploy/systemd/*.service deploy/systemd/*.timer; do
    sed "s#/usr/local/bin/#$bin/#g" "$u" >"$tmp/$(basename "$u")"
  done
  out=$(systemd-analyze verify "$tmp"/*.service "$tmp"/*.timer 2>&1 || true)
  # Ignore complaints about the host's own units, keep ours.
  ours=$(printf '%s\n' "$out" | grep -F "$tmp" || true)
  if [ -n "$ours" ]; then
    printf 'systemd-analyze verify:\n%s\n' "$ours"
    exit 1
  fi
  echo "systemd units: ok ($(ls "$tmp" | wc -l) verified)"
elif [ "${FANOUT_REQUIRE_REDIS:-}" = 1 ]; then
  echo "systemd units: systemd-analyze is not on PATH and FANOUT_REQUIRE_REDIS=1: install it (apt-get install systemd)"
  exit 1
else
  echo "systemd units: systemd-analyze not installed, not verified (set FANOUT_REQUIRE_REDIS=1 to fail instead)"
fi

n=0
while IFS= read -r line; do
  case "$line" in ''|'#'*|*=*) continue ;; esac
  read -r min hour dom mon dow user cmd <<<"$line"
  if [ -z "${cmd:-}" ]; then
    echo "cron/fanout-minion.cron: too few fields: $line"; exit 1
  fi
  for f in "$min" "$hour" "$dom" "$mon" "$dow"; do
    if ! printf '%s' "$f" | grep -Eq '^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*$'; then
      echo "cron/fanout-minion.cron: bad time field '$f' in: $line"; exit 1
    fi
  done
  if ! id -u "$user" >/dev/null 2>&1; then
    echo "cron/fanout-minion.cron: unknown user '$user' in: $line"; exit 1
  fi
  n=$((n + 1))
done < cron/fanout-minion.cron
[ "$n" -gt 0 ] || { echo "cron/fanout-minion.cron: no entries"; exit 1; }
echo "crontab: ok ($n entries)"
