#!/usr/bin/env bash
# Fault injection between two processes in separate network namespaces:
# examples/fault_peer.rs as receiver and sender, joined by a veth pair
# (10.77.0.1 sender, 10.77.0.2 receiver), over TCP and over QUIC.
#
#   a. baseline          every envelope acknowledged
#   b. receiver killed   kill -9 mid-stream: every envelope ends acknowledged
#                        or as a SendFailed event, nothing stays in flight,
#                        the engine's parked ops return to their baseline
#                        (the sender's delivery window is 5 s here, as the
#                        receiver does not come back)
#   c. link cut          the receiver's link down for a few seconds, then up:
#                        acknowledgements resume without restarting anything,
#                        and the envelopes the cut failed are sent again
#                        within the delivery window (60 s), so every one ends
#                        acknowledged
#   d. loss and delay    netem when the kernel has it; otherwise random drop
#                        (iptables or nft) and a token-bucket rate limit whose
#                        queue delays packets under load
#   e. restart           the sender snapshots while nothing the receiver
#                        sends gets back, and a new process restores it: what
#                        it carried is delivered, and the receiver's engine
#                        outputs no value twice
#   f. sustained         60 s at a steady rate, both transports at once; RSS
#                        of each process at 5 s and at the end
#   w. WAN               the sender dials tests/faults/wan_relay.py, running
#                        in the receiver's namespace in front of it: 250 ms
#                        each way (500 ms round trip), 10 Mbit/s each way, 1%
#                        loss (a dropped datagram over QUIC, a stall like a
#                        retransmission over TCP); small values at a modest
#                        rate, then a few of 1 MiB, with the library's
#                        default request timeout (a stall bound; QUIC gets
#                        some 80 KB/s through, so a value takes over 10 s):
#                        every envelope
#                        acknowledged, none failed
#
# Needs root, iproute2 (ip, tc) and cargo; iptables or nft for random loss
# when the kernel has no netem; python3 for the WAN relay. It creates two
# namespaces, bbf<pid>s and bbf<pid>r, and removes them (and the processes
# it started) on exit.
#
# Prints a table; exits 1 if any envelope is lost (sent, but neither
# acknowledged, failed with an event, nor still in flight at exit) or a
# scenario's check fails. Without root or network namespaces it prints why
# it skipped and exits 0.
#
# FAULTS_ONLY="a e" runs only those scenarios; FAULTS_SENDER_ARGS adds
# arguments to every sender (e.g. "--max-in-flight 100"); FAULTS_KEEP=1
# keeps the processes' output (kept anyway when a check fails).
# FAULTS_QUICK=1 is a quick run of a few minutes (the one CI runs): only a,
# b, c and w (unless FAULTS_ONLY says otherwise), on both transports, with
# fewer values, with the debug build.
# FAULTS_BIN=/path/to/fault_peer uses that binary instead of building one
# with cargo; FAULTS_WAN_RELAY=/path/to/wan_relay.py uses that relay.
set -euo pipefail

skip() {
    echo "fault suite skipped: $*"
    exit 0
}

[[ $(uname -s) == Linux ]] || skip "needs Linux network namespaces"
[[ $(id -u) == 0 ]] || skip "needs root and ip netns (run as root on Linux)"
command -v ip >/dev/null || skip "needs root and ip netns (iproute2 is not installed)"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAG=bbf$$
NS_S=${TAG}s
NS_R=${TAG}r
DEV_S=${TAG}s0
DEV_R=${TAG}r0
ADDR_S=10.77.0.1
ADDR_R=10.77.0.2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bbf-faults.XXXXXX")
PIDS=()
FAILED=0

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_R" 2>/dev/null || true
    if [[ ${FAULTS_KEEP:-0} == 1 || $FAILED == 1 ]]; then
        echo "output kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! ip netns add "$NS_S" 2>/dev/null; then
    skip "needs root and ip netns (cannot create a network namespace here)"
fi
ip netns add "$NS_R"

QUICK=${FAULTS_QUICK:-0}
if [[ -n ${FAULTS_BIN:-} ]]; then
    BIN=$FAULTS_BIN
    [[ -x $BIN ]] || { echo "FAULTS_BIN=$BIN is not an executable" >&2; exit 1; }
    echo "using $BIN"
elif [[ $QUICK == 1 ]]; then
    # The debug build the tests already made: the links, not the CPU, set
    # the pace of the quick scenarios.
    echo "building examples/fault_peer (debug)"
    (cd "$ROOT" && cargo build --quiet --example fault_peer)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/fault_peer
else
    echo "building examples/fault_peer (release)"
    (cd "$ROOT" && cargo build --quiet --release --example fault_peer)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/fault_peer
fi
WAN_RELAY=${FAULTS_WAN_RELAY:-$ROOT/tests/faults/wan_relay.py}

ip link add "$DEV_S" netns "$NS_S" type veth peer name "$DEV_R" netns "$NS_R"
ip -n "$NS_S" addr add "$ADDR_S/24" dev "$DEV_S"
ip -n "$NS_R" addr add "$ADDR_R/24" dev "$DEV_R"
for ns in "$NS_S" "$NS_R"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_S" link set "$DEV_S" up
ip -n "$NS_R" link set "$DEV_R" up

in_s() { ip netns exec "$NS_S" "$@"; }
in_r() { ip netns exec "$NS_R" "$@"; }

# What this kernel and userland offer for loss and delay.
LOSS=none
DELAY=none
if in_s tc qdisc add dev "$DEV_S" root netem delay 1ms 2>/dev/null; then
    in_s tc qdisc del dev "$DEV_S" root
    LOSS=netem
    DELAY=netem
else
    if command -v iptables >/dev/null &&
        in_s iptables -A OUTPUT -m statistic --mode random --probability 0.5 -j ACCEPT 2>/dev/null; then
        in_s iptables -F OUTPUT
        LOSS=iptables
    elif command -v nft >/dev/null && in_s nft add table inet bbf 2>/dev/null; then
        in_s nft delete table inet bbf
        LOSS=nft
    fi
    if in_s tc qdisc add dev "$DEV_S" root tbf rate 1mbit burst 8kb latency 100ms 2>/dev/null; then
        in_s tc qdisc del dev "$DEV_S" root
        DELAY=tbf
    fi
fi
echo "loss: $LOSS, delay: $DELAY"

# $1 namespace runner, $2 device, $3 loss percent: drop that share of what
# leaves through the device.
drop_randomly() {
    local run=$1 dev=$2 percent=$3
    case $LOSS in
    iptables)
        $run iptables -A OUTPUT -o "$dev" -m statistic --mode random \
            --probability "$(awk "BEGIN{print $percent/100}")" -j DROP
        ;;
    nft)
        $run nft add table inet bbf
        $run nft add chain inet bbf out '{ type filter hook output priority 0; }'
        $run nft add rule inet bbf out oifname "$dev" numgen random mod 100 \< "$percent" drop
        ;;
    esac
}

# Drops everything leaving through the device (a one-way cut).
drop_all() {
    local run=$1 dev=$2
    case $LOSS in
    iptables) $run iptables -A OUTPUT -o "$dev" -j DROP ;;
    nft)
        $run nft add table inet bbf
        $run nft add chain inet bbf out '{ type filter hook output priority 0; }'
        $run nft add rule inet bbf out oifname "$dev" drop
        ;;
    netem) $run tc qdisc add dev "$dev" root netem loss 100% ;;
    esac
}

clear_faults() {
    local run dev
    for pair in "in_s $DEV_S" "in_r $DEV_R"; do
        read -r run dev <<<"$pair"
        $run tc qdisc del dev "$dev" root 2>/dev/null || true
        case $LOSS in
        iptables) $run iptables -F OUTPUT ;;
        nft) $run nft delete table inet bbf 2>/dev/null || true ;;
        esac
    done
}

# A number from a flat JSON line: json <line> <key>.
json() {
    sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9]*\).*/\1/p" <<<"$1" | head -n 1
}

# The same, 0 when absent, for arithmetic.
num() {
    local value
    value=$(json "$@")
    echo "${value:-0}"
}

# A string from a JSON line: json_text <line> <key>.
json_text() {
    sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" <<<"$1" | head -n 1
}

# An object's members without their quotes: json_object <line> <key>.
json_object() {
    sed -n "s/.*\"$2\":{\([^}]*\)}.*/\1/p" <<<"$1" | tr -d '"' | head -n 1
}

final_line() {
    grep '"final":true' "$1" | tail -n 1
}

# Starts a receiver: receiver <name> <transport> <port> [arguments...]; sets
# R_PID, R_ADDR.
receiver() {
    local name=$1 transport=$2 port=$3 listen
    shift 3
    case $transport in
    tcp) listen=/ip4/$ADDR_R/tcp/$port ;;
    quic) listen=/ip4/$ADDR_R/udp/$port/quic-v1 ;;
    esac
    # `ip netns exec` execs the program, so $! is the program itself.
    ip netns exec "$NS_R" "$BIN" receive --listen "$listen" --transport "$transport" "$@" \
        >"$WORK/$name.r.out" 2>"$WORK/$name.r.err" &
    R_PID=$!
    PIDS+=("$R_PID")
    local waited=0
    until R_ADDR=$(head -n 1 "$WORK/$name.r.out" 2>/dev/null) && [[ $R_ADDR == /ip4/* ]]; do
        sleep 0.1
        waited=$((waited + 1))
        if ((waited > 100)); then
            echo "receiver $name did not start:" >&2
            cat "$WORK/$name.r.err" >&2
            return 1
        fi
    done
}

# Starts a sender in the background: sender <name> <transport> <args...>;
# sets S_PID.
sender() {
    local name=$1 transport=$2
    shift 2
    # shellcheck disable=SC2086 # FAULTS_SENDER_ARGS is a list of arguments
    ip netns exec "$NS_S" "$BIN" send --dial "$R_ADDR" --transport "$transport" "$@" ${FAULTS_SENDER_ARGS:-} \
        >"$WORK/$name.s.out" 2>"$WORK/$name.s.err" &
    S_PID=$!
    PIDS+=("$S_PID")
}

stop_receiver() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

ROWS=()
NOTES=()

# Records a row: row <scenario> <transport> <sender summary> <problems> <note>.
row() {
    local scenario=$1 transport=$2 summary=$3 problems=$4 note=$5
    local sent acked failed lost labels
    sent=$(json "$summary" sent)
    acked=$(json "$summary" acknowledged)
    failed=$(json "$summary" failed_with_event)
    lost=$(json "$summary" lost)
    labels=$(json_object "$summary" failed_by_label)
    if [[ -z $summary || -z $lost ]]; then
        sent=? acked=? failed=? lost=?
        problems="no summary from the sender${problems:+; $problems}"
    elif [[ $lost != 0 ]]; then
        problems="lost $lost${problems:+; $problems}"
    fi
    [[ -n $labels ]] && failed="$failed ($labels)"
    local verdict=ok
    if [[ -n $problems ]]; then
        verdict="FAIL: $problems"
        FAILED=1
    fi
    ROWS+=("$scenario|$transport|$sent|$acked|$failed|$lost|$verdict")
    [[ -n $note ]] && NOTES+=("$scenario/$transport: $note")
    echo "  $scenario $transport: sent $sent, acknowledged $acked, failed $failed, lost $lost: $verdict"
}

# Checks common to every finished sender: nothing in flight, parked ops back
# to their baseline, no envelope with two outcomes, no value refused.
settled() {
    local s=$1 problems=()
    [[ $(json "$s" in_flight_at_exit) == 0 ]] || problems+=("$(json "$s" in_flight_at_exit) in flight at exit")
    [[ $(json "$s" queued_at_exit) == 0 ]] || problems+=("$(json "$s" queued_at_exit) queued at exit")
    [[ $(json "$s" pending_async_end) == "$(json "$s" pending_async_baseline)" ]] ||
        problems+=("pending_async $(json "$s" pending_async_baseline) -> $(json "$s" pending_async_end)")
    [[ $(json "$s" second_outcomes) == 0 ]] || problems+=("$(json "$s" second_outcomes) envelopes with two outcomes")
    [[ $(json "$s" invoke_errors) == 0 ]] || problems+=("$(json "$s" invoke_errors) invoke errors")
    [[ $(json_text "$s" stopped) == done ]] || problems+=("stopped: $(json_text "$s" stopped)")
    join "${problems[@]}"
}

# The non-empty arguments, separated by "; ".
join() {
    local out="" part
    for part in "$@"; do
        [[ -z $part ]] || out+="${out:+; }$part"
    done
    echo "$out"
}

# Starts wan_relay.py in the receiver's namespace, in front of the receiver
# started last: relay <name> <transport> <relay arguments...>; sets RELAY_PID
# and points R_ADDR, which the sender dials, at the relay.
relay() {
    local name=$1 transport=$2 proto port relay_port line
    shift 2
    case $transport in
    tcp) proto=tcp ;;
    quic) proto=udp ;;
    esac
    # R_ADDR is /ip4/<address>/<tcp|udp>/<port>/...
    port=$(cut -d/ -f5 <<<"$R_ADDR")
    ip netns exec "$NS_R" python3 "$WAN_RELAY" --listen "$ADDR_R:0" --target "$ADDR_R:$port" \
        --proto "$proto" "$@" >"$WORK/$name.relay.out" 2>"$WORK/$name.relay.err" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    local waited=0
    until line=$(grep -m 1 '^wan_relay listening on ' "$WORK/$name.relay.out" 2>/dev/null); do
        sleep 0.1
        waited=$((waited + 1))
        if ((waited > 100)); then
            echo "relay $name did not start:" >&2
            cat "$WORK/$name.relay.err" >&2
            return 1
        fi
    done
    relay_port=${line##*:}
    R_ADDR=${R_ADDR/\/$port\//\/$relay_port\/}
}

# The number of values a scenario sends: scaled <full run> <quick run>.
scaled() {
    if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi
}

TIMEOUT=(--request-timeout 3)
PORT=4000

# Scenarios: each takes the transport, starts its own receiver on a fresh
# port and records its row(s).

baseline() {
    local transport=$1 s r problems n
    n=$(scaled 300 100)
    PORT=$((PORT + 1))
    receiver a-$transport "$transport" $PORT
    sender a-$transport "$transport" --count "$n" --rate 200/s "${TIMEOUT[@]}"
    wait "$S_PID" || true
    sleep 0.3
    stop_receiver "$R_PID"
    s=$(final_line "$WORK/a-$transport.s.out")
    r=$(final_line "$WORK/a-$transport.r.out")
    problems=$(settled "$s")
    [[ $(json "$s" acknowledged) == "$n" ]] || problems=$(join "$problems" "not all acknowledged")
    [[ $(json "$r" received) == "$n" ]] || problems=$(join "$problems" "receiver output $(json "$r" received) of $n")
    row "a. baseline" "$transport" "$s" "$problems" ""
}

receiver_killed() {
    local transport=$1 s problems
    PORT=$((PORT + 1))
    receiver b-$transport "$transport" $PORT
    # The receiver does not come back: a short delivery window ends each
    # envelope the kill caught as window_passed 5 s after it was sent.
    sender b-$transport "$transport" --count "$(scaled 400 250)" --rate 100/s "${TIMEOUT[@]}" \
        --delivery-window 5
    sleep 1.5
    kill -9 "$R_PID"
    wait "$R_PID" 2>/dev/null || true
    wait "$S_PID" || true
    s=$(final_line "$WORK/b-$transport.s.out")
    problems=$(settled "$s")
    (($(num "$s" failed_with_event) > 0)) || problems=$(join "$problems" "no failure reported after the kill")
    row "b. receiver killed" "$transport" "$s" "$problems" \
        "pending_async $(json "$s" pending_async_baseline) -> $(json "$s" pending_async_end)"
}

link_cut() {
    local transport=$1 s problems at_up acked_at_up acked_after
    PORT=$((PORT + 1))
    receiver c-$transport "$transport" $PORT
    # Values go on for a few seconds after the link is back (at 7 s).
    sender c-$transport "$transport" --count "$(scaled 600 450)" --rate 50/s "${TIMEOUT[@]}"
    sleep 3
    in_r ip link set "$DEV_R" down
    sleep 4
    in_r ip link set "$DEV_R" up
    at_up=$(grep '"final":false' "$WORK/c-$transport.s.out" | tail -n 1)
    acked_at_up=$(num "$at_up" acknowledged)
    wait "$S_PID" || true
    sleep 0.3
    stop_receiver "$R_PID"
    s=$(final_line "$WORK/c-$transport.s.out")
    problems=$(settled "$s")
    acked_after=$(($(num "$s" acknowledged) - acked_at_up))
    ((acked_after > 0)) || problems=$(join "$problems" "no acknowledgement after the link came back")
    # What the cut failed for a transport reason is sent again once the link
    # is back (the delivery window is 60 s): nothing ends failed.
    [[ $(json "$s" acknowledged) == "$(json "$s" sent)" ]] ||
        problems=$(join "$problems" "acknowledged $(json "$s" acknowledged) of $(json "$s" sent)")
    row "c. link cut 4 s" "$transport" "$s" "$problems" \
        "$acked_at_up acknowledged when the link came back, $acked_after after"
}

loss_and_delay() {
    local transport=$1 s r problems mechanism size run dev
    PORT=$((PORT + 1))
    case $DELAY in
    netem)
        for pair in "in_s $DEV_S" "in_r $DEV_R"; do
            read -r run dev <<<"$pair"
            $run tc qdisc add dev "$dev" root netem delay 60ms 20ms loss 5%
        done
        mechanism="netem delay 60±20 ms, loss 5% each way"
        size=512
        ;;
    *)
        mechanism=""
        if [[ $DELAY == tbf ]]; then
            for pair in "in_s $DEV_S" "in_r $DEV_R"; do
                read -r run dev <<<"$pair"
                $run tc qdisc add dev "$dev" root tbf rate 1mbit burst 8kb latency 200ms
            done
            mechanism="tbf 1 Mbit/s with up to 200 ms of queue each way, offered ~1 Mbit/s"
        fi
        if [[ $LOSS != none ]]; then
            drop_randomly in_s "$DEV_S" 5
            drop_randomly in_r "$DEV_R" 5
            mechanism="${mechanism:+$mechanism; }$LOSS random drop 5% each way"
        fi
        size=2048
        ;;
    esac
    receiver d-$transport "$transport" $PORT
    sender d-$transport "$transport" --count 400 --rate 50/s --size $size "${TIMEOUT[@]}"
    wait "$S_PID" || true
    sleep 0.3
    stop_receiver "$R_PID"
    clear_faults
    s=$(final_line "$WORK/d-$transport.s.out")
    r=$(final_line "$WORK/d-$transport.r.out")
    problems=$(settled "$s")
    [[ -n $mechanism ]] || problems=$(join "$problems" "no loss or delay mechanism")
    (($(num "$r" received) >= $(num "$s" acknowledged))) ||
        problems=$(join "$problems" "receiver output fewer values than were acknowledged")
    row "d. loss + delay" "$transport" "$s" "$problems" \
        "${mechanism:-none}; $(json "$s" elapsed_ms) ms for 400 values of $size B"
}

# The sender is stopped while the receiver's answers are held back, so
# envelopes are in flight (some already taken by the receiver's engine,
# their acknowledgements on the way), and a new process restores it.
restart() {
    local transport=$1 s1 s2 r problems snapshot held
    PORT=$((PORT + 1))
    receiver e-$transport "$transport" $PORT
    snapshot=$WORK/e-$transport.snapshot
    sender e1-$transport "$transport" --count 400 --rate 100/s --snapshot-to "$snapshot" "${TIMEOUT[@]}"
    sleep 1.5
    # Nothing the receiver sends gets back: new requests stall in protocol
    # negotiation and every envelope sent stays in flight.
    if [[ $LOSS == none ]]; then
        in_r ip link set "$DEV_R" down
        held="receiver's link down"
    else
        drop_all in_r "$DEV_R"
        held="receiver->sender dropped by $LOSS"
    fi
    sleep 1.5
    kill -TERM "$S_PID"
    wait "$S_PID" || true
    clear_faults
    in_r ip link set "$DEV_R" up
    s1=$(final_line "$WORK/e1-$transport.s.out")
    problems=""
    (($(num "$s1" carried_in_snapshot) > 0)) || problems="nothing in flight at the snapshot"
    [[ $(json "$s1" second_outcomes) == 0 ]] || problems=$(join "$problems" "envelopes with two outcomes")
    row "e. restart: stopped" "$transport" "$s1" "$problems" \
        "$(json "$s1" carried_in_snapshot) envelopes carried in the snapshot ($held)"
    sender e2-$transport "$transport" --count 400 --rate 100/s --restore-from "$snapshot" "${TIMEOUT[@]}"
    wait "$S_PID" || true
    sleep 0.3
    stop_receiver "$R_PID"
    s2=$(final_line "$WORK/e2-$transport.s.out")
    r=$(final_line "$WORK/e-$transport.r.out")
    problems=$(settled "$s2")
    [[ $(json "$s2" restored) == "$(json "$s1" carried_in_snapshot)" ]] ||
        problems=$(join "$problems" "restored $(json "$s2" restored) of $(json "$s1" carried_in_snapshot) carried")
    [[ $(json "$r" duplicates) == 0 ]] || problems=$(join "$problems" "receiver output $(json "$r" duplicates) values twice")
    (($(num "$s2" failed_with_event) == 0)) ||
        problems=$(join "$problems" "$(json "$s2" failed_with_event) failed after the restart")
    (($(num "$r" received) >= 400 - $(num "$s1" failed_with_event))) ||
        problems=$(join "$problems" "receiver output $(json "$r" received) of 400")
    row "e. restart: restored" "$transport" "$s2" "$problems" \
        "receiver output $(json "$r" received) distinct values, $(json "$r" duplicates) twice; its engine dropped $(($(num "$r" wire_received) - $(num "$r" received))) envelopes it had taken before; $(json "$s2" reused_wire_req_ids) outcomes for envelopes whose wire_req_id an earlier one had"
}

# Through wan_relay.py, as over a long, slow, lossy path: 250 ms each way
# (500 ms round trip), 10 Mbit/s each way, 1% loss. Small values at a
# modest rate, then a few of 1 MiB, each run with its own receiver and relay.
wan() {
    local transport=$1
    # Both sides with the library's default request timeout (10 s), which
    # bounds a stall, not an exchange: at 1% loss and a 500 ms round trip
    # QUIC's congestion control gets some 80 KB/s through (TCP's ends at the
    # relay, so TCP gets the full rate), and a 1 MiB value takes over 10 s.
    wan_run w-$transport "$transport" "w. WAN" "$(scaled 200 100)" 512 20/s
    wan_run w1m-$transport "$transport" "w. WAN 1 MiB values" "$(scaled 5 2)" 1048576 0.2/s
}

# wan_run <name> <transport> <row label> <count> <size> <rate>
wan_run() {
    local name=$1 transport=$2 label=$3 n=$4 size=$5 rate=$6 s r problems
    local link="250 ms each way, 10 Mbit/s, loss 1%"
    local receiver_args=(--request-timeout 10)
    local sender_args=(--request-timeout 10 --drain-timeout 120)
    if ! command -v python3 >/dev/null || [[ ! -f $WAN_RELAY ]]; then
        row "$label" "$transport" "" "needs python3 and $WAN_RELAY" ""
        return
    fi
    PORT=$((PORT + 1))
    receiver "$name" "$transport" $PORT "${receiver_args[@]}"
    relay "$name" "$transport" --delay-ms 250 --rate-kbit 10000 --loss 1 --seed $PORT
    sender "$name" "$transport" --count "$n" --rate "$rate" --size "$size" "${sender_args[@]}"
    wait "$S_PID" || true
    sleep 0.6
    stop_receiver "$R_PID"
    stop_receiver "$RELAY_PID"
    s=$(final_line "$WORK/$name.s.out")
    r=$(final_line "$WORK/$name.r.out")
    problems=$(settled "$s")
    [[ $(json "$s" acknowledged) == "$n" ]] ||
        problems=$(join "$problems" "acknowledged $(json "$s" acknowledged) of $n")
    (($(num "$s" failed_with_event) == 0)) ||
        problems=$(join "$problems" "$(json "$s" failed_with_event) failed")
    [[ $(json "$r" received) == "$n" ]] || problems=$(join "$problems" "receiver output $(json "$r" received) of $n")
    row "$label" "$transport" "$s" "$problems" \
        "wan_relay $link; $(json "$s" elapsed_ms) ms for $n values of $size B at $rate"
}

# The first progress line at or after 5 s.
at_5s() {
    awk -F'"t_ms":' '/"final":false/ { split($2, a, ","); if (a[1] >= 5000 && !found) { print; found = 1 } }' "$1"
}

# 60 s at 50 values/s, both transports at once.
sustained() {
    local transport s r s5 r5 problems rss
    local -A receivers senders
    for transport in tcp quic; do
        PORT=$((PORT + 1))
        receiver f-$transport "$transport" $PORT
        receivers[$transport]=$R_PID
        sender f-$transport "$transport" --count 3000 --rate 50/s "${TIMEOUT[@]}"
        senders[$transport]=$S_PID
    done
    for transport in tcp quic; do
        wait "${senders[$transport]}" || true
    done
    sleep 0.3
    for transport in tcp quic; do
        stop_receiver "${receivers[$transport]}"
        s=$(final_line "$WORK/f-$transport.s.out")
        r=$(final_line "$WORK/f-$transport.r.out")
        s5=$(at_5s "$WORK/f-$transport.s.out")
        r5=$(at_5s "$WORK/f-$transport.r.out")
        problems=$(settled "$s")
        [[ $(json "$r" received) == 3000 ]] || problems=$(join "$problems" "receiver output $(json "$r" received) of 3000")
        rss="RSS KiB from 5 s to the end: sender $(json "$s5" rss_kib) -> $(json "$s" rss_kib_end) ($(($(num "$s" rss_kib_end) - $(num "$s5" rss_kib))) KiB), receiver $(json "$r5" rss_kib) -> $(json "$r" rss_kib) ($(($(num "$r" rss_kib) - $(num "$r5" rss_kib))) KiB)"
        row "f. sustained 60 s" "$transport" "$s" "$problems" "$rss"
    done
}

want() {
    local only=${FAULTS_ONLY:-}
    if [[ -z $only && $QUICK == 1 ]]; then
        only="a b c w"
    fi
    [[ -z $only || " $only " == *" $1 "* ]]
}

for transport in tcp quic; do
    echo "== $transport"
    if want a; then baseline "$transport"; fi
    if want b; then receiver_killed "$transport"; fi
    if want c; then link_cut "$transport"; fi
    if want d; then loss_and_delay "$transport"; fi
    if want e; then restart "$transport"; fi
    if want w; then wan "$transport"; fi
done
if want f; then
    echo "== sustained (60 s, both transports at once)"
    sustained
fi

echo
{
    echo "scenario|transport|sent|acknowledged|failed-with-event|lost|check"
    printf '%s\n' "${ROWS[@]}"
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    END {
        for (r = 1; r <= NR; r++) {
            line = ""
            for (i = 1; i < 7; i++) line = line sprintf("%-" w[i] "s | ", cell[r, i])
            line = line cell[r, 7]
            print line
        }
    }'
echo
echo "loss: $LOSS; delay: $DELAY"
printf '%s\n' "${NOTES[@]}"
exit $FAILED
