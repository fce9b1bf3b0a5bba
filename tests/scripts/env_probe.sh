#!/bin/sh
# Prints the variables the warm-invocation test sets in one record and not in the other.
echo "FOO=${FOO-unset} BAR=${BAR-unset} KEY=${STORAGE_OBJECT_KEY-unset}"
