#!/bin/sh
echo "partial" > "$TMP_OUTPUT_DIR/partial.txt"
echo "model failed on purpose" >&2
exit 3
