#!/usr/bin/env bash
# Builds the QuPath extension module (qupath-extension-roiseg, Maven profile "qupath") when
# QuPath's artifacts can be resolved, and skips it cleanly (exit 0) when they cannot.
#
# QuPath publishes io.github.qupath:* only to the SciJava Maven repository, which not every build
# machine reaches; roiseg-client (the default build) does not need it. Extra arguments go to the
# Maven build, e.g.:
#   bash qupath_extension/build-qupath-module.sh -Droiseg.python=$PWD/.venv/bin/python
#   bash qupath_extension/build-qupath-module.sh -DskipITs
# Environment: MVN (default "mvn"), QUPATH_RESOLVE_TIMEOUT (seconds, default 60).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

read -r -a mvn <<< "${MVN:-mvn}"
artifact="io.github.qupath:qupath-gui-fx:0.5.1"
scijava="https://maven.scijava.org/content/repositories/releases"
limit="${QUPATH_RESOLVE_TIMEOUT:-60}"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# -U: retry even if an earlier attempt left a cached failure in ~/.m2. Short connect and read
# timeouts so that an unreachable host fails in seconds; `timeout` bounds the whole attempt.
resolve=("${mvn[@]}" -B -q -U
         -Dmaven.wagon.http.retryHandler.count=1
         -Dmaven.wagon.httpconnectionManager.ttlSeconds=10
         -Dmaven.wagon.rto=20000
         dependency:get "-Dartifact=${artifact}"
         "-DremoteRepositories=scijava::default::${scijava}")
if command -v timeout > /dev/null; then
    resolve=(timeout "${limit}" "${resolve[@]}")
fi

status=0
"${resolve[@]}" > "$log" 2>&1 || status=$?

if [[ $status -ne 0 ]]; then
    if [[ $status -eq 124 ]]; then
        reason="no answer within ${limit} s"
    else
        reason=""
        for pattern in 'unknown host [^ :]+' 'could not resolve host[^,;]*' 'connection refused' \
                       'connect timed out' 'read timed out' 'no route to host' 'network is unreachable' \
                       'could not find artifact [^ ]+' 'not found in [^ ]+' 'status code: [0-9]+[^,;]*' \
                       'transfer failed for [^ ]+'; do
            reason="$(grep -m1 -oiE "$pattern" "$log" || true)"
            [[ -n "$reason" ]] && break
        done
        reason="${reason:-Maven exited with status ${status}}"
    fi
    echo "SKIPPED the QuPath extension module: QuPath 0.5.1 artifacts cannot be resolved from the SciJava repository (${scijava}: ${reason}). roiseg-client is built and tested as usual; build the extension on a machine that reaches SciJava with: bash qupath_extension/build-qupath-module.sh"
    exit 0
fi

echo "QuPath 0.5.1 artifacts resolved: building the QuPath extension module (mvn -Pqupath verify)"
"${mvn[@]}" -B -q -Pqupath verify "$@"
jar=(qupath-extension-roiseg/target/qupath-extension-roiseg-*.jar)
echo "Built ${PWD}/${jar[0]}: drag it onto QuPath (0.5, 0.6 or 0.7)."
