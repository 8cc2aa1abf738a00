#!/bin/sh
# A PNG screenshot of a healing-pl dashboard (the top WIDTHx2000 pixels, WIDTH 1400 unless set), taken with a
# headless Chromium. The dashboard reads without sideways scrolling down to 900 px: WIDTH=900 shows that.
#   docs/make_screenshot.sh runs/table4-mnist5k/dashboard.html docs/dashboard.png
# Needs Debian's chromium-headless-shell (apt-get install chromium-headless-shell) or a chromium on PATH.
set -eu
width=${WIDTH:-1400}
if [ $# -ne 2 ]; then
    echo "usage: $0 DASHBOARD.html OUTPUT.png" >&2
    exit 2
fi
if [ ! -f "$1" ]; then
    echo "$0: '$1' does not exist; write it with: healing-pl report RUNS --output $1" >&2
    exit 2
fi
browser=""
for name in chromium-headless-shell chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
        browser=$(command -v "$name")
        break
    fi
done
if [ -z "$browser" ]; then
    echo "$0: no headless Chromium found; install chromium-headless-shell." >&2
    exit 2
fi
page="file://$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
mkdir -p "$(dirname "$2")"
out="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
rm -f "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$profile" --window-size="$width",2000 --screenshot="$out" "$page" >/dev/null 2>&1
if [ ! -s "$out" ]; then
    echo "$0: the browser wrote no screenshot to '$2'." >&2
    exit 1
fi
echo "screenshot: $2"
