#!/bin/sh
# The fill pod's command: sh /fill/fill.sh REPOSITORY LANE. It lays out the repository volume for one
# lane, waits for `kubectl cp` to upload into REPOSITORY/incoming/, then publishes what came and exits 0.
#
#   kubectl cp artifacts/<lane> fill:REPOSITORY/incoming/artifacts
#   kubectl cp models/<lane>/resnet18 fill:REPOSITORY/incoming/resnet18
#   kubectl exec fill -- touch REPOSITORY/incoming/.complete
#
# Why not copy straight into place: `kubectl cp DIR pod:DEST` nests DIR inside DEST when DEST already
# exists (artifacts/onnx2tf/onnx2tf), and a version copied file by file into the folder TF Serving
# polls every 2 s can be seen half-written. incoming/ is emptied here first, so the copies never nest,
# and each version is published with one rename on the same file system, which a poller sees whole.
set -eu
repository=$1
lane=$2
incoming=$repository/incoming

# This pod runs as the Locust master's uid, so what it creates (reports/ above all) is the master's to
# write: fsGroup is not applied on NFS or on ReadWriteMany CSI volumes by default.
if ! mkdir -p "$repository/models/$lane/resnet18" "$repository/artifacts" "$repository/reports/$lane"; then
    echo "fill: cannot create folders in $repository as uid $(id -u): make the volume's root writable by it" >&2
    exit 1
fi
rm -rf "$incoming"
mkdir "$incoming"
touch "$incoming/.ready" # what the readiness probe looks for: kubectl cp may start

while [ ! -e "$incoming/.complete" ]; do
    sleep 1
done
# Readable by all: convert writes versions 0700, and TF Serving's image runs as root, which NFS
# squashes to nobody, so it reads only what others may read.
chmod -R a+rX "$incoming"

if [ -d "$incoming/artifacts" ]; then
    rm -rf "$repository/artifacts/$lane.old"
    if [ -d "$repository/artifacts/$lane" ]; then
        mv "$repository/artifacts/$lane" "$repository/artifacts/$lane.old"
    fi
    mv "$incoming/artifacts" "$repository/artifacts/$lane"
    rm -rf "$repository/artifacts/$lane.old"
    echo "fill: artifacts/$lane published"
fi
if [ -d "$incoming/resnet18" ]; then
    for version in "$incoming"/resnet18/*; do
        [ -d "$version" ] || continue
        number=${version##*/}
        target=$repository/models/$lane/resnet18/$number
        if [ -e "$target" ]; then
            # A published version never changes under a running server: convert a new version instead.
            echo "fill: models/$lane/resnet18/$number is already published; left as it is"
        else
            mv "$version" "$target"
            echo "fill: models/$lane/resnet18/$number published"
        fi
    done
fi
rm -rf "$incoming"
echo "fill: done"
