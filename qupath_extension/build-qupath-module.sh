#!/usr/bin/env bash
# Builds and tests the QuPath extension (qupath-extension-roiseg, Maven profile "qupath") against
# real QuPath, laid out from ../shared/qupath by install-test-qupath.sh:
#  1. the one shipped jar, compiled against QuPath 0.5.1 with release 17, with its unit tests;
#  2. its unit tests again against QuPath 0.6.0 and 0.7.0 (profiles qupath-0.6 and qupath-0.7,
#     Maven on the Java those versions need; target/ keeps the shipped jar);
#  3. the tests inside real QuPath (tests/qupath: headless scripts and the GUI under Xvfb) with that
#     jar on each version, and the paquo project-mode tests on 0.6.0 and 0.7.0 (make test-python
#     runs them on 0.5.1).
# On a machine without ../shared/qupath it says that it skipped all this and exits 0.
#
# usage: build-qupath-module.sh [MAVEN ARGS]
# Environment: MVN (default "mvn -B -q"), QUPATH_DIR (where the QuPaths are laid out, default
# ~/.cache/roiseg/qupath), PYTHON (the interpreter with roiseg installed, default ../.venv/bin/python),
# ROISEG_SCREENSHOTS (a folder: keep the GUI test's screenshots there, one folder per version).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
read -r -a mvn <<< "${MVN:-mvn -B -q}"
qupath_dir=${QUPATH_DIR:-$HOME/.cache/roiseg/qupath}
python=${PYTHON:-$PWD/../.venv/bin/python}
versions=(0.5.1 0.6.0 0.7.0)

out=$(bash install-test-qupath.sh "$qupath_dir" "${versions[@]}")
echo "$out"
if grep -q '^SKIPPED' <<< "$out"; then
    exit 0
fi
java_home() { cat "$qupath_dir/$1/JAVA_HOME"; }

echo "QuPath extension: building the jar against QuPath 0.5.1 and running its unit tests"
# (roiseg-client's own tests ran in make test-java)
JAVA_HOME=$(java_home 0.5.1) "${mvn[@]}" -Pqupath install -DskipITs -Dtest='qupath.ext.roiseg.**' \
    -Dsurefire.failIfNoSpecifiedTests=false "$@"
jar=$(ls "$PWD"/qupath-extension-roiseg/target/qupath-extension-roiseg-*.jar | grep -v '/original-')

for profile in qupath-0.6:0.6.0 qupath-0.7:0.7.0; do
    echo "QuPath extension: unit tests against QuPath ${profile#*:}"
    JAVA_HOME=$(java_home "${profile#*:}") "${mvn[@]}" -Pqupath,"${profile%%:*}" -pl qupath-extension-roiseg test "$@"
done

homes=""
for v in "${versions[@]}"; do homes+="$v=$qupath_dir/$v "; done
echo "QuPath extension: tests inside real QuPath ${versions[*]} (headless scripts, GUI under Xvfb)"
(cd .. && ROISEG_QUPATH_HOMES="$homes" ROISEG_QUPATH_JAR="$jar" "$python" -m pytest -q tests/qupath)
for v in 0.6.0 0.7.0; do
    echo "roiseg batch on QuPath projects through paquo, QuPath $v"
    (cd .. && PAQUO_QUPATH_DIR="$qupath_dir/$v" "$python" -m pytest -q tests/io/test_qupath_project.py -m qupath)
done
echo "Built $jar: drag it onto QuPath 0.5, 0.6 or 0.7 (tested with 0.5.1, 0.6.0 and 0.7.0)."
