#!/bin/sh
# Writes its pid to $1 and a background grandchild's pid to $2, then waits forever.
echo $$ > "$1"
sleep 300 &
echo $! > "$2"
wait
