#!/usr/bin/env bash
# Both kinds of display plane, with no kernel module and no VMM: serves an
# mdpy-xga (region plane) and an mbochs-medium (dmabuf plane), plays a guest
# on each device socket (mbochs: bochs-drm's 1024x768x32 mode set, then a pan;
# both: a test pattern drawn into the mapped framebuffer), and snapshots both
# screens through the display sockets while the "guests" stay attached.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product umdev >/dev/null
swift build --product umdev-bench >/dev/null
umdev=$(swift build --show-bin-path)/umdev
guest=$(swift build --show-bin-path)/umdev-bench   # its play-guest is the scripted guest
dir=$(mktemp -d /tmp/umdev-demo.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT

for type in mdpy-xga mbochs-medium; do
    "$umdev" serve --type "$type" --socket "$dir/$type.sock" --log-level warning &
    until [ -S "$dir/$type.sock.display" ]; do sleep 0.05; done
done

# The guests hold their device sockets, as QEMU would, while the viewer looks.
"$guest" play-guest --socket "$dir/mdpy-xga.sock" --seed 1 --hold 60 >"$dir/mdpy-xga.guest" &
"$guest" play-guest --socket "$dir/mbochs-medium.sock" --mode 1024x768 --pan 0,256 --seed 2 --hold 60 >"$dir/mbochs-medium.guest" &
for type in mdpy-xga mbochs-medium; do
    until grep -q '^ready' "$dir/$type.guest" 2>/dev/null; do sleep 0.05; done
    echo "$type guest drew: $(cat "$dir/$type.guest")"
done

for type in mdpy-xga mbochs-medium; do
    "$umdev" view --socket "$dir/$type.sock.display" --png "$dir/$type.png"
done
