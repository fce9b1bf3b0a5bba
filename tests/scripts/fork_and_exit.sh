#!/bin/sh
# Leaves a grandchild running in its process group and exits 0. Writes the grandchild's pid to $1.
sleep 300 &
echo $! > "$1"
echo "main process exiting"
