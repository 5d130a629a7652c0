# Helpers shared by the install scripts; source it after setting ROOT, and optionally
# INSTALL_NAME (prefix of error messages).
#
# Every step records a stamp (a version or a hash of its inputs) under $STAMPS and is skipped while
# the stamp matches, which keeps the scripts idempotent and quiet when nothing changed.

TOOLS="${SA_TOOLS_DIR:-$ROOT/.local}"
STAMPS="$TOOLS/stamps"
mkdir -p "$STAMPS" "$TOOLS/bin"

say() { printf '==> %s\n' "$*"; }
fail() { printf '%s: %s\n' "${INSTALL_NAME:-install}" "$*" >&2; exit 1; }

# stamp_ok NAME VALUE: true when step NAME last succeeded with inputs VALUE.
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" > "$STAMPS/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# find_go: the Go toolchain, which may live outside PATH (/usr/local/go is where the official
# tarball goes); empty when there is none.
find_go() {
  command -v go 2>/dev/null && return
  [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go
  return 0
}
