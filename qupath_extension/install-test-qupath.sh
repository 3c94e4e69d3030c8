#!/usr/bin/env bash
# Lays out the QuPath versions the extension is built and tested against, from ../shared/qupath
# (QuPath built from its release sources, a test fixture beside the repository, never part of it),
# and installs the Debian packages the real-QuPath tests need: Xvfb and openbox for the GUI, GTK 3
# for JavaFX, OpenSlide for SVS files.
#
# usage: install-test-qupath.sh DEST VERSION...    e.g. install-test-qupath.sh ~/.cache/roiseg/qupath 0.5.1 0.7.0
# Each VERSION ends up in DEST/VERSION (DEST/VERSION/bin/QuPath, also a PAQUO_QUPATH_DIR) and its
# API jars in the local Maven repository; a layout that is already complete is kept. Prints
# "SKIPPED ..." and exits 0 on a machine without ../shared/qupath.
set -euo pipefail

dest=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$(cd "$repo/.." && pwd)/shared/qupath
if [[ ! -x "$shared/install-qupath.sh" ]]; then
    echo "SKIPPED the QuPath extension module and the real-QuPath tests: this machine has no $shared" \
         "(QuPath built from source for tests; present in development and CI)."
    exit 0
fi

packages=(xvfb openbox libgtk-3-0 libxtst6 fonts-dejavu-core libopenslide0)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-qupath: the real-QuPath tests need: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-test-qupath: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi

m2=${MAVEN_REPO:-$HOME/.m2/repository}
for version in "$@"; do
    # what the layout was made from: the fixture's files (names, sizes, times) and its script
    made_from=$(cd "$shared" && ls -l --time-style=+%s install-qupath.sh "$version" "$version"/jars | sha256sum | cut -c1-16)
    stamp="$dest/$version/.made-from"
    if [[ -x "$dest/$version/bin/QuPath" && -f "$stamp" && "$(cat "$stamp")" == "$made_from" \
          && -f "$m2/io/github/qupath/qupath-gui-fx/$version/qupath-gui-fx-$version.jar" ]]; then
        continue
    fi
    echo "install-test-qupath: laying out QuPath $version in $dest/$version"
    rm -rf "${dest:?}/$version"
    MVN="${MVN:-mvn -B -q}" bash "$shared/install-qupath.sh" --version "$version" "$dest/$version"
    echo "$made_from" > "$stamp"
done
