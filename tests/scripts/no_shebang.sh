# No #! line: Conveyor runs this with /bin/sh. Record which shell that was.
readlink /proc/$$/exe > "$TMP_OUTPUT_DIR/shell.txt"
echo "args: $*"
