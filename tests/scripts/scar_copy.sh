#!/bin/bash
# A SCAR/OSCAR user script as users write it: copy the input to the output dir.
echo "SCRIPT: Invoked with input '$INPUT_FILE_PATH' (key '$STORAGE_OBJECT_KEY')" >&2
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
echo done
