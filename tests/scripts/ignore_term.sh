#!/bin/sh
# Ignores SIGTERM (and so does its sleep): only SIGKILL stops it. Writes its pid to $1.
trap '' TERM
echo $$ > "$1"
while :; do sleep 0.05; done
