#!/bin/bash
# The Darknet pattern of the contract: relative paths, resolved against the image's WORKDIR.
NAME=$(basename "$INPUT_FILE_PATH" | cut -d. -f1)
echo "SCRIPT: Analyzing file '$INPUT_FILE_PATH', saving the output image in '$TMP_OUTPUT_DIR'" >&2
./darknet detect cfg/yolo.cfg yolo.weights "$INPUT_FILE_PATH" -out "$TMP_OUTPUT_DIR/$NAME" > "$TMP_OUTPUT_DIR/$NAME.out"
