#!/bin/bash
# Assemble the lab's Asterisk 22 configuration: the shared kit's etc/, the files the traces
# of pbxsim/traces were recorded with (pbxsim/traces/etc: dialplan, PJSIP phones, queues,
# features, manager, cdr.conf with loguniqueid + newcdrcolumns), and cdr_csv loaded.
#   lab/etc.sh KIT_ETC OUT_DIR     e.g. lab/etc.sh ../shared/asterisk/etc /tmp/lab-etc
set -eu
[ $# -eq 2 ] || { echo "usage: $0 KIT_ETC OUT_DIR" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$2"
cp "$1"/*.conf "$2/"
cp "$REPO"/pbxsim/traces/etc/*.conf "$2/"
sed -i '/^noload => cdr_csv.so/d' "$2/modules.conf"
echo "$2: $(ls "$2" | wc -l) files"
