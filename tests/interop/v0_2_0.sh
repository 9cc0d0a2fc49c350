#!/usr/bin/env bash
# A 0.2.0 peer and this version exchange values, both ways, over TCP and
# QUIC: the `mesh` example of each (its `Echo` Module) listens while the
# other dials, sends three strings and waits for their replies.
#
# It builds 0.2.0's `mesh` from this repository's history (the commit that
# made 0.2.0) in release, beside this tree's: about five minutes on two
# cores the first time. Run from the repository's root:
#
#     tests/interop/v0_2_0.sh
#
# Exits 0 when all four runs delivered every value and reply.
set -euo pipefail

V0_2_0=efa3c32bd6f03329e1c3f4ab0dd13c7a742b1c4d
root=$(pwd)
work=${BB_INTEROP_DIR:-${TMPDIR:-/tmp}/bb-libp2p-0.2.0}
mkdir -p "$work/src"
if [ ! -f "$work/src/Cargo.toml" ]; then
    git -C "$root" archive "$V0_2_0" | tar -x -C "$work/src"
fi
echo "building 0.2.0's mesh ($work)"
(cd "$work/src" && CARGO_TARGET_DIR="$work/target" cargo build --release --quiet --example mesh)
echo "building this version's mesh"
cargo build --release --quiet --example mesh
old="$work/target/release/examples/mesh"
new="$root/target/release/examples/mesh"

failures=0
# run <name> <listener binary> <dialer binary> <transport>
run() {
    local name=$1 listener=$2 dialer=$3 transport=$4
    local out="$work/$name.listener" pid address
    "$listener" listen --transport "$transport" >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$out" && break
        sleep 0.1
    done
    address=$(grep -o "listening on .*" "$out" | head -1 | cut -d' ' -f3)
    if [ -z "$address" ]; then
        echo "FAIL $name: the listener printed no address"; kill "$pid" 2>/dev/null || true
        failures=$((failures + 1)); return
    fi
    local dialed
    dialed=$(timeout 60 "$dialer" dial "$address" 2>&1) || true
    # 0.2.0's listener exits when its dialer leaves; this version's serves
    # the next one.
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local replies received
    replies=$(grep -c '^reply "' <<<"$dialed" || true)
    received=$(grep -c '^received "' "$out" || true)
    if grep -q "all 3 replies arrived" <<<"$dialed" && [ "$replies" = 3 ] && [ "$received" = 3 ]; then
        echo "ok   $name: 3 values out, 3 received, 3 replies back"
    else
        echo "FAIL $name: $received received, $replies replies"
        echo "--- dialer"; echo "$dialed"; echo "--- listener"; cat "$out"
        failures=$((failures + 1))
    fi
}

for transport in tcp quic; do
    run "0.2.0-listens-$transport" "$old" "$new" "$transport"
    run "0.2.0-dials-$transport" "$new" "$old" "$transport"
done
[ "$failures" = 0 ]
