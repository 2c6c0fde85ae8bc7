#!/usr/bin/env bash
# Copies the Kafka broker jars (pom.xml) from Maven Central into .local/kafka/libs, once.
# Usage: deploy/local/kafka/fetch.sh [ROOT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "${1:-}"

POM=$KAFKA_SCRIPT_DIR/pom.xml
# The stamp holds the pom's checksum: editing pom.xml (e.g. a version bump) triggers a fresh copy.
want=$(sha256sum "$POM" | cut -d' ' -f1)
if [[ -f $KAFKA_LIBS/.stamp && $(cat "$KAFKA_LIBS/.stamp") == "$want" ]]; then
    exit 0
fi

command -v java >/dev/null || kafka_die "java not found (need Java 17+)"
command -v mvn >/dev/null || kafka_die "mvn not found (need Maven 3.8+)"
kafka_say "fetching Kafka jars with Maven into $KAFKA_LIBS (first time only; ~/.m2 caches them)"
t0=$(now_ms)
mkdir -p "$KAFKA_BASE"
tmp=$KAFKA_BASE/libs.tmp
rm -rf "$tmp"
if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" > "$KAFKA_BASE/mvn.log" 2>&1; then
    cat "$KAFKA_BASE/mvn.log" >&2
    rm -rf "$tmp"
    kafka_die "mvn dependency:copy-dependencies failed (is Maven Central reachable?)"
fi
echo "$want" > "$tmp/.stamp"
rm -rf "$KAFKA_LIBS"
mv "$tmp" "$KAFKA_LIBS"
kafka_say "jars ready ($(ls "$KAFKA_LIBS" | wc -l) files) in $(elapsed "$t0")s"
