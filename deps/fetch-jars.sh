#!/bin/sh
# Copies Spark's JVM dependencies (deps/pom.xml) from Maven Central into $1, once, at install
# time. Shared by the Makefile and docker/Dockerfile so that CI exercises the image's steps.
set -eu
out=${1:-build/jars}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$(cd "$out" && pwd)"
ls "$out"/*.jar
